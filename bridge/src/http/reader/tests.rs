//! The request reader against pipelined, split, chunked, oversized and malformed input.

use proptest::prelude::*;

use super::*;

fn reader() -> RequestReader {
    RequestReader::new(Limits {
        max_headers: 8,
        max_head_bytes: 512,
        max_body: 1024,
    })
}

fn all(r: &mut RequestReader) -> Result<Vec<Request>, HttpError> {
    let mut out = Vec::new();
    while let Some(req) = r.poll()? {
        out.push(req);
    }
    Ok(out)
}

/// Trailers adding up to exactly the head limit are taken whole or split anywhere (the
/// fuzzer found a split byte by byte refusing them: a lone CR of the closing empty line was
/// counted against the limit).
#[test]
fn trailers_at_exactly_the_limit_are_taken_however_split() {
    let head = b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
    // Trailer lines of 512 bytes in all, CRLFs included.
    let mut trailers = Vec::new();
    for _ in 0..4 {
        trailers.extend_from_slice(b"X-Pad: ");
        trailers.extend(std::iter::repeat_n(b'a', 128 - 7 - 2));
        trailers.extend_from_slice(b"\r\n");
    }
    assert_eq!(trailers.len(), 512);
    let mut wire = head;
    wire.extend_from_slice(&trailers);
    wire.extend_from_slice(b"\r\n");
    for piece in [wire.len(), 1, 2, 3, 7] {
        let mut r = reader();
        let mut got = Vec::new();
        for chunk in wire.chunks(piece) {
            r.push(chunk);
            got.extend(all(&mut r).unwrap_or_else(|e| panic!("piece {piece}: {e}")));
        }
        assert_eq!(got.len(), 1, "piece {piece}");
    }
    // One byte more is refused, split or not.
    let mut over = wire.clone();
    over.insert(over.len() - 4, b'a');
    for piece in [over.len(), 1, 2] {
        let mut r = reader();
        let refused = over.chunks(piece).any(|chunk| {
            r.push(chunk);
            all(&mut r).is_err()
        });
        assert!(refused, "piece {piece}");
    }
}

#[test]
fn pipelined_requests_come_out_in_order_with_their_bodies() {
    let mut r = reader();
    r.push(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
          PUT /c?x=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nhe\r\n3\r\nllo\r\n0\r\nTrailer: t\r\n\r\n\
          GET /d HTTP/1.0\r\n\r\n",
    );
    let got = all(&mut r).unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!((got[0].method.clone(), got[0].path()), (Method::Get, "/a"));
    assert!(got[0].keep_alive);
    assert_eq!(&got[1].body[..], b"abc");
    assert_eq!(&got[2].body[..], b"hello");
    assert_eq!((got[2].path(), got[2].query()), ("/c", Some("x=1")));
    assert!(!got[3].keep_alive, "HTTP/1.0 closes unless asked not to");
    assert!(!r.in_request());
}

#[test]
fn connection_close_and_keep_alive_tokens() {
    let mut r = reader();
    r.push(b"GET / HTTP/1.1\r\nConnection: Upgrade, close\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let got = all(&mut r).unwrap();
    assert!(!got[0].keep_alive);
    assert!(got[1].keep_alive);
}

#[test]
fn refusals_carry_their_status() {
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"GET nopath HTTP/1.1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 10000000000\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n801\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX", 400),
        (
            b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\n\r\n",
            431,
        ),
    ];
    for (input, status) in cases {
        let mut r = reader();
        r.push(input);
        let e = all(&mut r).expect_err(&String::from_utf8_lossy(input));
        assert_eq!(e.status(), *status, "{}", String::from_utf8_lossy(input));
        // Nothing more is read after a refusal.
        r.push(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(r.poll(), Ok(None));
        assert!(!r.wants_input());
    }
}

#[test]
fn a_head_that_never_ends_is_refused_at_the_limit_not_held() {
    let mut r = reader();
    r.push(b"GET / HTTP/1.1\r\nx-flood: ");
    for _ in 0..100 {
        r.push(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        match r.poll() {
            Ok(None) => continue,
            Err(e) => {
                assert_eq!(e.status(), 431);
                return;
            }
            Ok(Some(_)) => panic!("no request should come"),
        }
    }
    panic!("the flood was never refused");
}

#[test]
fn a_large_declared_body_is_waited_for_without_being_allocated() {
    let mut r = RequestReader::new(Limits::default());
    r.push(b"POST / HTTP/1.1\r\nContent-Length: 4000000\r\n\r\n");
    assert_eq!(r.poll(), Ok(None));
    assert!(r.in_request());
    assert!(r.buffered() < 100, "nothing reserved for the claim");
}

#[test]
fn expect_continue_is_reported_once() {
    let mut r = reader();
    r.push(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(r.poll(), Ok(None));
    assert!(r.take_continue());
    assert!(!r.take_continue());
    r.push(b"ok");
    assert_eq!(&r.poll().unwrap().unwrap().body[..], b"ok");
}

#[test]
fn leading_empty_lines_are_skipped() {
    let mut r = reader();
    r.push(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(all(&mut r).unwrap().len(), 1);
}

proptest! {
    /// Any split of the same bytes gives the same requests.
    #[test]
    fn splits_do_not_matter(cuts in proptest::collection::vec(0usize..200, 0..8)) {
        let input: &[u8] = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST /y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
            GET /z HTTP/1.1\r\nA: b\r\n\r\n";
        let mut whole = reader();
        whole.push(input);
        let expected = all(&mut whole).unwrap();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % input.len()).collect();
        cuts.sort_unstable();
        let mut r = reader();
        let mut got = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([input.len()]) {
            r.push(&input[at..c.max(at)]);
            at = c.max(at);
            got.extend(all(&mut r).unwrap());
        }
        prop_assert_eq!(got, expected);
    }

    /// Arbitrary bytes never panic, and what is buffered stays bounded.
    #[test]
    fn arbitrary_input_is_refused_or_parsed(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut r = reader();
        for piece in data.chunks(97) {
            r.push(piece);
            if all(&mut r).is_err() {
                break;
            }
            prop_assert!(r.buffered() <= 512 + 1024 + 2 + 97);
        }
    }
}

/// Found by the fuzzer: a chunk-size line that httparse accepted as a prefix (too large: 413)
/// and refused whole (a bare LF: 400). The line is now parsed only once it is whole.
#[test]
fn a_chunk_size_line_is_judged_whole_whatever_the_split() {
    let input: &[u8] =
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nBaaaaa\t   \t\t;x=/ +\t\n";
    let mut whole = reader();
    whole.push(input);
    let expected = all(&mut whole).unwrap_err().status();
    for cut in 1..input.len() {
        let mut r = reader();
        r.push(&input[..cut]);
        let first = all(&mut r);
        r.push(&input[cut..]);
        let status = match first {
            Err(e) => e.status(),
            Ok(_) => all(&mut r).unwrap_err().status(),
        };
        assert_eq!(status, expected, "cut at {cut}");
    }
}
