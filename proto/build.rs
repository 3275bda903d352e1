//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/loggregator/v2/envelope.proto",
        "proto/loggregator/v2/ingress.proto",
        "proto/loggregator/v2/egress.proto",
        "proto/sluice/v1/doppler.proto",
        "proto/sluice/v1/search.proto",
        "proto/opentelemetry/proto/collector/logs/v1/logs_service.proto",
        "proto/opentelemetry/proto/collector/metrics/v1/metrics_service.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
