//! Following log files: globs, rotation by rename and by copytruncate, a durable checkpoint per
//! file, multiline records and a maximum line length. Each record becomes a log envelope with
//! the input's `source_id` and tag `file` (its path); parts of a split line carry tag `split`
//! (`"1/3"`, …).

mod reader;
mod source;
#[cfg(test)]
mod tests;

pub use source::FilesSource;
