//! A small server-sent events reader for the revocation feed tests.

use std::time::Duration;

/// One SSE event (or a comment, with `event == ":"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// An open stream.
pub struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    /// GET `url` as `client_id:secret`, with `Last-Event-ID` if given.
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        client: (&str, &str),
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = http
            .get(url)
            .basic_auth(client.0, Some(client.1))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.unwrap()
    }

    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200, "the stream opens");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event or comment, or `None` when the server closed the
    /// stream. Panics after `timeout` without one.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        tokio::time::timeout(timeout, self.next_inner())
            .await
            .expect("an event arrives in time")
    }

    /// The next event that is not a comment.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        loop {
            let event = self.next(timeout).await?;
            if event.event != ":" {
                return Some(event);
            }
        }
    }

    async fn next_inner(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse(&block));
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

fn parse(block: &str) -> SseEvent {
    let mut event = SseEvent {
        event: "message".into(),
        ..SseEvent::default()
    };
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            return SseEvent {
                event: ":".into(),
                id: None,
                data: comment.trim().to_owned(),
            };
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = value.to_owned(),
            "id" => event.id = Some(value.to_owned()),
            "data" => data.push(value.to_owned()),
            _ => {}
        }
    }
    event.data = data.join("\n");
    event
}
