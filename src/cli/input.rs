//! Reading the CLI's input: a file or stdin, with clear errors.

use std::io::Read;

/// Largest input read from a file or stdin.
pub const MAX_INPUT_BYTES: u64 = 256 << 20;

/// Reads `FILE` or `-` (stdin). Returns the source name used in messages and the bytes.
///
/// # Errors
/// A message naming the file and the reason (missing, a directory, too large, unreadable).
pub fn read(arg: &str) -> Result<(String, Vec<u8>), String> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        if buf.len() as u64 > MAX_INPUT_BYTES {
            return Err(format!(
                "stdin: input is larger than {MAX_INPUT_BYTES} bytes"
            ));
        }
        return Ok(("stdin".to_owned(), buf));
    }
    let meta = std::fs::metadata(arg).map_err(|e| format!("cannot read {arg}: {e}"))?;
    if meta.is_dir() {
        return Err(format!(
            "cannot read {arg}: it is a directory, expected a file of findings"
        ));
    }
    if meta.len() > MAX_INPUT_BYTES {
        return Err(format!(
            "cannot read {arg}: {} bytes is over the {MAX_INPUT_BYTES}-byte limit",
            meta.len()
        ));
    }
    let bytes = std::fs::read(arg).map_err(|e| format!("cannot read {arg}: {e}"))?;
    Ok((arg.to_owned(), bytes))
}
