//! Reading HTTP/1.1 responses off a connection: the head parsed with `httparse`, the body
//! counted and thrown away (a load generator has no use for it, and must not buffer it).

/// Largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// Headers accepted in one response head.
const MAX_HEADERS: usize = 64;

/// A response's head, once all of it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, blank line included.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// How the body ends.
    pub body: Body,
    /// The server closes the connection after this response.
    pub close: bool,
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// After this many bytes.
    Length(u64),
    /// When the server closes the connection (no length given).
    UntilClose,
}

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseError {
    /// The head is not HTTP/1.x.
    Malformed(String),
    /// The head is longer than [`MAX_HEAD`].
    HeadTooLarge,
    /// The body is chunked, which this generator does not decode.
    Chunked,
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::Malformed(why) => write!(f, "malformed response head: {why}"),
            ResponseError::HeadTooLarge => write!(f, "response head over {MAX_HEAD} bytes"),
            ResponseError::Chunked => write!(f, "chunked responses are not supported"),
        }
    }
}

/// The head at the start of `buf`, `None` while it is incomplete.
pub fn head(buf: &[u8]) -> Result<Option<Head>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(ResponseError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ResponseError::Malformed(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let mut close = response.version == Some(0);
    let mut body = Body::UntilClose;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| ResponseError::Malformed(format!("content-length {value:?}")))?;
            body = Body::Length(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            return Err(ResponseError::Chunked);
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            close = value.contains("close") || (close && !value.contains("keep-alive"));
        }
    }
    // The generator only sends GET: these have no body whatever they say.
    if status == 204 || status == 304 || (100..200).contains(&status) {
        body = Body::Length(0);
    }
    Ok(Some(Head {
        len,
        status,
        body,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_once_whole() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello";
        for end in 0..bytes.len() - 5 {
            assert_eq!(head(&bytes[..end]), Ok(None), "at {end}");
        }
        assert_eq!(
            head(bytes),
            Ok(Some(Head {
                len: bytes.len() - 5,
                status: 200,
                body: Body::Length(5),
                close: false
            }))
        );
    }

    #[test]
    fn closing_is_seen_in_either_version() {
        let close = |text: &str| head(text.as_bytes()).unwrap().unwrap().close;
        assert!(close("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"));
        assert!(!close("HTTP/1.1 200 OK\r\n\r\n"));
        assert!(close("HTTP/1.0 200 OK\r\n\r\n"));
        assert!(!close("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn bodies_end_by_length_or_by_close() {
        let body = |text: &str| head(text.as_bytes()).unwrap().unwrap().body;
        assert_eq!(
            body("HTTP/1.1 503 X\r\ncontent-length: 0\r\n\r\n"),
            Body::Length(0)
        );
        assert_eq!(body("HTTP/1.1 200 OK\r\n\r\n"), Body::UntilClose);
        assert_eq!(body("HTTP/1.1 204 No Content\r\n\r\n"), Body::Length(0));
    }

    #[test]
    fn what_cannot_be_read_is_an_error() {
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ResponseError::Chunked)
        ));
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(ResponseError::Malformed(_))
        ));
        assert!(matches!(
            head(b"SSH-2.0\r\n\r\n"),
            Err(ResponseError::Malformed(_))
        ));
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(head(&long), Err(ResponseError::HeadTooLarge));
    }
}
