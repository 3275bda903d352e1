//! A small server-sent-events client written for the tests alone, on a bare TCP socket: HTTP/1.1
//! by hand, chunked bodies, the SSE framing (`event:`, `id:`, `data:`). It shares no code
//! with Sluice's own client, so what it decodes is what any client would see; and its socket's
//! receive buffer can be made small, so that a reader that stops reading really holds the
//! server back.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`, or `message` when absent.
    pub event: String,
    /// `id:`, when given.
    pub id: Option<String>,
    /// The `data:` lines joined by newlines.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|error| panic!("event data is not JSON ({error}): {}", self.data))
    }
}

/// An open event stream.
pub struct SseClient {
    reader: BufReader<TcpStream>,
    /// The response status.
    pub status: u16,
    chunked: bool,
    finished: bool,
    text: String,
    events: VecDeque<SseEvent>,
}

/// `application/x-www-form-urlencoded` text of `params`.
pub fn query_string(params: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        let mut encoded = String::new();
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                encoded.push(char::from(byte));
            } else {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
        encoded
    };
    params
        .iter()
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

impl SseClient {
    /// `GET path` (with its query) from `api` (`http://host:port`), with extra `headers`; a
    /// `receive_buffer` in bytes makes the socket's receive buffer that small.
    pub async fn get(
        api: &str,
        path: &str,
        headers: &[(&str, &str)],
        receive_buffer: Option<u32>,
    ) -> SseClient {
        let host = api.trim_start_matches("http://").trim_end_matches('/');
        let address: std::net::SocketAddr =
            tokio::net::lookup_host(host).await.unwrap().next().unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(bytes) = receive_buffer {
            socket.set_recv_buffer_size(bytes).unwrap();
        }
        let mut stream = socket.connect(address).await.unwrap();
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
        let mut chunked = false;
        let mut length: Option<usize> = None;
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().ok();
            }
        }
        let mut client = SseClient {
            reader,
            status,
            chunked,
            finished: false,
            text: String::new(),
            events: VecDeque::new(),
        };
        if !chunked && let Some(length) = length {
            let mut body = vec![0; length];
            client.reader.read_exact(&mut body).await.unwrap();
            client.text = String::from_utf8_lossy(&body).into_owned();
            client.finished = true;
        }
        client
    }

    /// The whole body of a response that is not a stream (an error, say).
    pub async fn body(mut self) -> String {
        while !self.finished {
            self.read_more().await;
        }
        self.text
    }

    /// The next event, or `None` when the stream ended. Waits at most `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<SseEvent> {
        tokio::time::timeout(timeout, self.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {timeout:?}"))
    }

    /// The next event, or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            self.read_more().await;
            self.split_events();
        }
    }

    async fn read_more(&mut self) {
        if !self.chunked {
            let mut buffer = vec![0; 16 * 1024];
            let read = self.reader.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                self.finished = true;
            }
            self.text
                .push_str(&String::from_utf8_lossy(&buffer[..read]));
            return;
        }
        let mut line = String::new();
        if self.reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            self.finished = true;
            return;
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .unwrap_or_else(|_| panic!("not a chunk size: {line:?}"));
        if size == 0 {
            self.finished = true;
            return;
        }
        let mut chunk = vec![0; size + 2];
        if self.reader.read_exact(&mut chunk).await.is_err() {
            self.finished = true;
            return;
        }
        self.text.push_str(&String::from_utf8_lossy(&chunk[..size]));
    }

    fn split_events(&mut self) {
        while let Some(end) = self.text.find("\n\n") {
            let block: String = self.text.drain(..end + 2).collect();
            let mut event = SseEvent {
                event: "message".to_owned(),
                id: None,
                data: String::new(),
            };
            let mut data = Vec::new();
            let mut any = false;
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => {
                        event.event = value.to_owned();
                        any = true;
                    }
                    "id" => {
                        event.id = Some(value.to_owned());
                        any = true;
                    }
                    "data" => {
                        data.push(value.to_owned());
                        any = true;
                    }
                    _ => {}
                }
            }
            event.data = data.join("\n");
            if any {
                self.events.push_back(event);
            }
        }
    }
}
