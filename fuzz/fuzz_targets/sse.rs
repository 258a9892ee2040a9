//! The SDK's revocation feed reader (server-sent events): any stream is
//! read without a panic; cutting it into chunks anywhere changes nothing;
//! and it reads exactly what a plain reading of the WHATWG algorithm
//! (written here: normalize CRLF and CR to LF, drop a leading BOM, split
//! into lines, fields at the first colon) reads; a block past the limit is
//! refused, however it is chunked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_client::fuzzing::sse_blocks;

fn reference(stream: &[u8]) -> Vec<(Option<String>, String)> {
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut blocks = Vec::new();
    let (mut event, mut data): (Option<String>, Option<String>) = (None, None);
    let mut lines: Vec<&str> = text.split('\n').collect();
    // The last piece has no line ending yet: not read.
    lines.pop();
    for line in lines {
        if line.is_empty() {
            blocks.push((event.take(), data.take().unwrap_or_default()));
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    blocks
}

fuzz_target!(|data: &[u8]| {
    let Some((cuts, stream)) = data.split_first() else {
        return;
    };
    let whole = sse_blocks(&[stream], usize::MAX).expect("no limit");
    assert_eq!(whole, reference(stream));
    // Cut into chunks of lengths drawn from the first byte.
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut size = usize::from(*cuts % 7) + 1;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
        size = size % 5 + 1;
    }
    assert_eq!(sse_blocks(&chunks, usize::MAX).as_ref(), Some(&whole));
    // A small limit: refused in one piece iff refused in chunks.
    let limit = usize::from(*cuts);
    assert_eq!(
        sse_blocks(&[stream], limit).is_some(),
        sse_blocks(&chunks, limit).is_some()
    );
});
