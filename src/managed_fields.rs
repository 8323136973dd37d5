//! The API server's answers without `metadata.managedFields`, cut from the JSON before it is
//! decoded.
//!
//! The controller never reads managed fields (it writes its status with server-side apply, and
//! the watch caches drop them), but every object the API server sends carries them: an entry per
//! manager and subresource, each with a tree of the fields it owns. Decoded, each tree node is a
//! map entry: several KiB per object, allocated and freed again for every watch event and every
//! listed object. A page of listed objects decoded whole is the largest transient of a relist
//! (benchmark part 5). Cut from the text first, they cost a scan of the bytes instead.
//!
//! Only `managedFields` members of an object that is the value of a `metadata` member go. A line
//! whose structure the scanner cannot follow as one JSON value is passed on as it came (it checks
//! the structure, not each number or escape: kube's decoder reports what is malformed). A watch's
//! answer is one event per line, and each line is passed on as soon as it is whole; any other
//! answer is passed on whole, once it has all come.

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tower::{Layer, Service};

/// Cuts managed fields from the JSON answers: lists, watches, reads, and the object a write
/// answers with (decoded, never read).
#[derive(Clone, Copy, Debug, Default)]
pub struct WithoutManagedFieldsLayer;

impl<S> Layer<S> for WithoutManagedFieldsLayer {
    type Service = WithoutManagedFields<S>;

    fn layer(&self, inner: S) -> WithoutManagedFields<S> {
        WithoutManagedFields { inner }
    }
}

#[derive(Clone, Debug)]
pub struct WithoutManagedFields<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for WithoutManagedFields<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<Slimmed<ResBody>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let cut = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|t| t.to_str().ok())
                .is_some_and(|t| t.starts_with("application/json"));
            let mut response = response;
            if cut {
                // The body comes shorter than the server said.
                response.headers_mut().remove(http::header::CONTENT_LENGTH);
            }
            Ok(response.map(|body| Slimmed::new(body, cut)))
        })
    }
}

/// An answer's body, its managed fields cut line by line (see the module).
pub struct Slimmed<B> {
    inner: Pin<Box<B>>,
    cut: bool,
    /// What came after the last whole line.
    pending: BytesMut,
    /// What came after the data (trailers), passed on after the rest.
    after: Option<Frame<Bytes>>,
    ended: bool,
}

impl<B> Slimmed<B> {
    fn new(inner: B, cut: bool) -> Self {
        Slimmed {
            inner: Box::pin(inner),
            cut,
            pending: BytesMut::new(),
            after: None,
            ended: false,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Slimmed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if !this.cut {
            return this.inner.as_mut().poll_frame(cx);
        }
        loop {
            if this.ended {
                if !this.pending.is_empty() {
                    let mut rest = std::mem::take(&mut this.pending);
                    cut_lines(&mut rest);
                    return Poll::Ready(Some(Ok(Frame::data(rest.freeze()))));
                }
                return Poll::Ready(this.after.take().map(Ok));
            }
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                None => {
                    this.ended = true;
                    continue;
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(trailers) => {
                    this.after = Some(trailers);
                    this.ended = true;
                    continue;
                }
            };
            match memchr::memrchr(b'\n', &data) {
                None => this.pending.extend_from_slice(&data),
                Some(last) => {
                    this.pending.extend_from_slice(&data[..=last]);
                    let mut lines = this.pending.split();
                    this.pending.extend_from_slice(&data[last + 1..]);
                    cut_lines(&mut lines);
                    return Poll::Ready(Some(Ok(Frame::data(lines.freeze()))));
                }
            }
        }
    }
}

/// Cuts the managed fields from each line of `text`, in place.
pub fn cut_lines(text: &mut BytesMut) {
    let mut spans = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let end = memchr::memchr(b'\n', &text[start..]).map_or(text.len(), |i| start + i);
        if let Some(found) = managed_fields(&text[start..end]) {
            spans.extend(found.into_iter().map(|s| s.start + start..s.end + start));
        }
        start = end + 1;
    }
    remove(text, &spans);
}

/// Removes `spans` (in order, not overlapping) from `text`, moving what follows each forward.
fn remove(text: &mut BytesMut, spans: &[Range<usize>]) {
    let ordered = spans
        .iter()
        .zip(spans.iter().skip(1))
        .all(|(a, b)| a.end <= b.start);
    let within = spans
        .iter()
        .all(|s| s.start <= s.end && s.end <= text.len());
    if spans.is_empty() || !ordered || !within {
        return;
    }
    let mut to = spans[0].start;
    for (i, span) in spans.iter().enumerate() {
        let next = spans.get(i + 1).map_or(text.len(), |s| s.start);
        text.copy_within(span.end..next, to);
        to += next - span.end;
    }
    text.truncate(to);
}

/// Where the `managedFields` members of metadata objects are in `json` (one JSON value, with
/// whitespace around it), each with the comma that joins it to a neighbour; in order, not
/// overlapping. None when `json` is not one well-formed value, or nests deeper than any
/// Kubernetes object does.
pub fn managed_fields(json: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut scan = Scan {
        b: json,
        i: 0,
        depth: 0,
        spans: Vec::new(),
    };
    scan.ws();
    if scan.i == json.len() {
        return None;
    }
    scan.value(false)?;
    scan.ws();
    if scan.i != json.len() {
        return None;
    }
    // An object's spans come after those of the objects in it, and a managedFields member can
    // hold a metadata object with its own.
    let mut spans = scan.spans;
    spans.sort_by_key(|s| s.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start < last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    Some(merged)
}

/// How deep values may nest (kube-apiserver refuses objects nested deeper than 10,000, but a
/// managed-fields tree follows the object, and no resource of this controller nests that deep).
const DEPTH: u32 = 512;

const MANAGED_FIELDS: &[u8] = b"managedFields";

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    depth: u32,
    spans: Vec<Range<usize>>,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// One value; `metadata`: it is the value of a `metadata` member.
    fn value(&mut self, metadata: bool) -> Option<()> {
        self.depth += 1;
        if self.depth > DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(metadata)?,
            b'[' => self.array()?,
            b'"' => {
                self.string()?;
            }
            _ => self.scalar()?,
        }
        self.depth -= 1;
        Some(())
    }

    /// A string; returns its contents' range (escapes as they are).
    fn string(&mut self) -> Option<Range<usize>> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            let at = self.i + memchr::memchr2(b'"', b'\\', &self.b[self.i..])?;
            if self.b[at] == b'\\' {
                self.i = at + 2;
                if self.i > self.b.len() {
                    return None;
                }
            } else {
                self.i = at + 1;
                return Some(start..at);
            }
        }
    }

    /// A number, `true`, `false` or `null`: what runs up to the next delimiter.
    fn scalar(&mut self) -> Option<()> {
        let start = self.i;
        while let Some(byte) = self.peek() {
            if matches!(
                byte,
                b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'{' | b'[' | b':'
            ) {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then_some(())
    }

    fn array(&mut self) -> Option<()> {
        self.expect(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            self.value(false)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, metadata: bool) -> Option<()> {
        self.expect(b'{')?;
        // Of a metadata object: each member's start and end, and whether it is managedFields.
        let mut members: Vec<(usize, usize, bool)> = Vec::new();
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            let start = self.i;
            let key = self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            let key = &self.b[key];
            self.value(key == b"metadata")?;
            if metadata {
                members.push((start, self.i, key == MANAGED_FIELDS));
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        // Each run of managedFields members (one, or a key repeated) goes with the comma after
        // it, or, at the end, with the comma before it: from the end of the member it follows.
        let mut k = 0;
        while k < members.len() {
            if !members[k].2 {
                k += 1;
                continue;
            }
            let first = k;
            while k < members.len() && members[k].2 {
                k += 1;
            }
            let (start, end) = (members[first].0, members[k - 1].1);
            let span = match (members.get(k), first.checked_sub(1)) {
                (Some(&(next, _, _)), _) => start..next,
                (None, Some(before)) => members[before].1..end,
                (None, None) => start..end,
            };
            self.spans.push(span);
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn cut(text: &str) -> String {
        let mut b = BytesMut::from(text.as_bytes());
        cut_lines(&mut b);
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// `value` without the managedFields members of its metadata objects, as a decoder that
    /// skipped them would see it.
    fn without_managed_fields(value: &Value, metadata: bool) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(k, _)| !(metadata && k.as_str() == "managedFields"))
                    .map(|(k, v)| (k.clone(), without_managed_fields(v, k == "metadata")))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| without_managed_fields(v, false))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    const MANAGED: &str = r#"[{"manager":"kubectl","fieldsV1":{"f:spec":{"f:a":{}}}},{"manager":"x","fieldsV1":{"f:metadata":{"f:managedFields":{}}}}]"#;

    #[test]
    fn the_members_go_wherever_they_stand_with_one_comma() {
        let m = MANAGED;
        #[rustfmt::skip]
        let table = [
            ("only", format!(r#"{{"metadata":{{"managedFields":{m}}}}}"#), r#"{"metadata":{}}"#),
            ("first", format!(r#"{{"metadata":{{"managedFields":{m},"name":"a"}}}}"#), r#"{"metadata":{"name":"a"}}"#),
            ("middle", format!(r#"{{"metadata":{{"name":"a","managedFields":{m},"uid":"u"}}}}"#), r#"{"metadata":{"name":"a","uid":"u"}}"#),
            ("last", format!(r#"{{"metadata":{{"name":"a","managedFields":{m}}}}}"#), r#"{"metadata":{"name":"a"}}"#),
            ("spaced", format!("{{ \"metadata\" : {{ \"name\" : \"a\" ,\t\"managedFields\" : {m} }} }}"), "{ \"metadata\" : { \"name\" : \"a\" } }"),
            ("repeated", format!(r#"{{"metadata":{{"managedFields":{m},"managedFields":{m},"name":"a"}}}}"#), r#"{"metadata":{"name":"a"}}"#),
            ("repeated, last", format!(r#"{{"metadata":{{"a":1,"managedFields":{m},"managedFields":2}}}}"#), r#"{"metadata":{"a":1}}"#),
            ("repeated, apart", format!(r#"{{"metadata":{{"managedFields":1,"a":1,"managedFields":{m},"managedFields":2}}}}"#), r#"{"metadata":{"a":1}}"#),
            ("repeated, alone", format!(r#"{{"metadata":{{"managedFields":{m},"managedFields":2}}}}"#), r#"{"metadata":{}}"#),
            ("a line ending CRLF", format!("{{\"metadata\":{{\"name\":\"a\",\"managedFields\":{m}}}}}\r"), "{\"metadata\":{\"name\":\"a\"}}\r"),
            ("a list's items", format!(r#"{{"kind":"List","metadata":{{"resourceVersion":"9"}},"items":[{{"metadata":{{"name":"a","managedFields":{m}}}}},{{"metadata":{{"managedFields":{m},"name":"b"}}}}]}}"#), r#"{"kind":"List","metadata":{"resourceVersion":"9"},"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}"#),
            ("a watch event", format!(r#"{{"type":"MODIFIED","object":{{"metadata":{{"name":"a","managedFields":{m}}},"spec":{{}}}}}}"#), r#"{"type":"MODIFIED","object":{"metadata":{"name":"a"},"spec":{}}}"#),
            ("nested", format!(r#"{{"metadata":{{"managedFields":[{{"metadata":{{"managedFields":{m}}}}}],"labels":{{"metadata":{{"managedFields":1,"a":2}}}}}}}}"#), r#"{"metadata":{"labels":{"metadata":{"a":2}}}}"#),
            ("not in metadata", r#"{"spec":{"managedFields":[1]},"managedFields":2}"#.to_string(), r#"{"spec":{"managedFields":[1]},"managedFields":2}"#),
            ("an annotation's value", r#"{"metadata":{"annotations":{"a":"\"managedFields\":[{}]"}}}"#.to_string(), r#"{"metadata":{"annotations":{"a":"\"managedFields\":[{}]"}}}"#),
            ("an annotation's key", r#"{"metadata":{"annotations":{"managedFields":"kept"}}}"#.to_string(), r#"{"metadata":{"annotations":{"managedFields":"kept"}}}"#),
            ("escapes", format!(r#"{{"metadata":{{"name":"a\\\"}}{{","managedFields":{m},"x":"\\\\"}}}}"#), r#"{"metadata":{"name":"a\\\"}{","x":"\\\\"}}"#),
        ];
        for (name, text, want) in table {
            assert_eq!(cut(&text), want, "{name}");
            let (got, whole): (Value, Value) = (
                serde_json::from_str(&cut(&text)).unwrap(),
                serde_json::from_str(&text).unwrap(),
            );
            assert_eq!(got, without_managed_fields(&whole, false), "{name}");
        }
    }

    #[test]
    fn what_is_not_one_well_formed_value_a_line_is_passed_on_as_it_came() {
        let m = MANAGED;
        for text in [
            format!(r#"{{"metadata":{{"managedFields":{m}}}"#),
            format!(r#"{{"metadata":{{"managedFields":{m}}}}}}}"#),
            format!(r#"{{"metadata":{{"managedFields":{m}}}}} {{}}"#),
            format!(r#"{{"metadata":{{"managedFields":{m} "name":"a"}}}}"#),
            format!(r#"{{"metadata":{{"managedFields"{m}}}}}"#),
            format!(r#"{{"metadata":{{"managedFields":{m},"name":"a}}}}"#),
            format!(r#"{{"metadata":{{"managedFields":{m},"name":"a\"#),
            "   ".to_string(),
            String::new(),
            format!("{}{}", "[".repeat(600), "]".repeat(600)),
        ] {
            assert_eq!(cut(&text), text);
        }
    }

    #[test]
    fn each_line_is_cut_on_its_own() {
        let m = MANAGED;
        let text = format!(
            "{{\"object\":{{\"metadata\":{{\"managedFields\":{m}}}}}}}\nnot json {{\n{{\"metadata\":{{\"name\":\"b\",\"managedFields\":{m}}}}}\n"
        );
        assert_eq!(
            cut(&text),
            "{\"object\":{\"metadata\":{}}}\nnot json {\n{\"metadata\":{\"name\":\"b\"}}\n"
        );
    }

    /// Objects made at random, written compact and pretty, decode after the cut as the whole
    /// would without its managed fields.
    #[test]
    fn random_objects_decode_as_without_their_managed_fields() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        fn value(rng: &mut rand::rngs::StdRng, depth: u32) -> Value {
            let keys = [
                "metadata",
                "managedFields",
                "name",
                "f:spec",
                "a\"b",
                "items",
                "\\",
            ];
            // A metadata object, often with managed fields, among others.
            if depth < 4 && rng.random_range(0..3) == 0 {
                let mut meta = serde_json::Map::new();
                for _ in 0..rng.random_range(0..4) {
                    let key = keys[rng.random_range(0..keys.len())];
                    meta.insert(key.to_string(), value(rng, depth + 2));
                }
                return json!({ "metadata": meta });
            }
            match if depth > 4 {
                rng.random_range(0..4)
            } else {
                rng.random_range(0..7)
            } {
                0 => Value::Null,
                1 => json!(rng.random_range(-1000.0..1000.0)),
                2 => json!(rng.random::<bool>()),
                3 => json!(format!("s{}\"}}{{,\\", rng.random_range(0..100))),
                4 | 5 => Value::Object(
                    (0..rng.random_range(0..5))
                        .map(|_| {
                            let key = keys[rng.random_range(0..keys.len())];
                            (key.to_string(), value(rng, depth + 1))
                        })
                        .collect(),
                ),
                _ => Value::Array(
                    (0..rng.random_range(0..4))
                        .map(|_| value(rng, depth + 1))
                        .collect(),
                ),
            }
        }
        let mut cut_some = 0;
        for _ in 0..2_000 {
            let whole = value(&mut rng, 0);
            let want = without_managed_fields(&whole, false);
            for text in [
                serde_json::to_string(&whole).unwrap(),
                serde_json::to_string_pretty(&whole)
                    .unwrap()
                    .replace('\n', " "),
            ] {
                let got = cut(&text);
                let decoded: Value = serde_json::from_str(&got).unwrap();
                assert_eq!(decoded, want, "{text}");
                cut_some += usize::from(got.len() < text.len());
            }
        }
        assert!(
            cut_some > 100,
            "the objects made had managed fields to cut: {cut_some}"
        );
    }

    /// The layer cuts what the API server answers as JSON, and passes anything else on.
    #[tokio::test]
    async fn the_layer_cuts_json_answers_only() {
        use http_body_util::{BodyExt, Full};
        let text = format!(r#"{{"metadata":{{"name":"a","managedFields":{MANAGED}}}}}"#);
        for (content_type, want) in [
            (
                Some("application/json"),
                r#"{"metadata":{"name":"a"}}"#.to_string(),
            ),
            (
                Some("application/json;stream=watch"),
                r#"{"metadata":{"name":"a"}}"#.to_string(),
            ),
            (Some("application/yaml"), text.clone()),
            (None, text.clone()),
        ] {
            let answer = text.clone();
            let server = tower::service_fn(move |_: http::Request<()>| {
                let mut response = http::Response::builder();
                if let Some(t) = content_type {
                    response = response.header(http::header::CONTENT_TYPE, t);
                }
                let response = response
                    .body(Full::new(Bytes::from(answer.clone())))
                    .unwrap();
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let mut client = WithoutManagedFieldsLayer.layer(server);
            let response = client.call(http::Request::new(())).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                String::from_utf8(body.to_vec()).unwrap(),
                want,
                "{content_type:?}"
            );
        }
    }

    /// A body that comes in chunks cut anywhere gives what the whole text cut at once gives,
    /// and a whole line goes on as soon as it has come.
    #[tokio::test]
    async fn a_body_in_chunks_is_cut_line_by_line_and_a_whole_line_goes_at_once() {
        use http_body_util::{BodyExt, StreamBody};
        let m = MANAGED;
        let text = format!(
            "{{\"type\":\"ADDED\",\"object\":{{\"metadata\":{{\"name\":\"a\",\"managedFields\":{m}}}}}}}\n{{\"type\":\"ADDED\",\"object\":{{\"metadata\":{{\"managedFields\":{m},\"name\":\"b\"}}}}}}\n{{\"kind\":\"List\",\"metadata\":{{\"managedFields\":{m}}}}}"
        );
        let whole = cut(&text);
        for size in [1, 2, 7, 64, 1_000] {
            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = text
                .as_bytes()
                .chunks(size)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let body = Slimmed::new(StreamBody::new(futures::stream::iter(chunks)), true);
            let got = body.collect().await.unwrap().to_bytes();
            assert_eq!(
                String::from_utf8(got.to_vec()).unwrap(),
                whole,
                "chunks of {size}"
            );
        }

        // The first event's line, and the start of the next: the first goes on now.
        let (tx, rx) =
            futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, std::convert::Infallible>>();
        let first_line_end = text.find('\n').unwrap() + 1;
        tx.unbounded_send(Ok(Frame::data(Bytes::copy_from_slice(
            &text.as_bytes()[..first_line_end + 10],
        ))))
        .unwrap();
        let mut body = Slimmed::new(StreamBody::new(rx), true);
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(
            String::from_utf8(frame.to_vec()).unwrap(),
            "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"a\"}}}\n"
        );

        // A body not to cut (not JSON) goes on as it came.
        let body = Slimmed::new(
            StreamBody::new(futures::stream::iter([Ok::<_, std::convert::Infallible>(
                Frame::data(Bytes::from(text.clone())),
            )])),
            false,
        );
        assert_eq!(body.collect().await.unwrap().to_bytes(), Bytes::from(text));
    }
}
