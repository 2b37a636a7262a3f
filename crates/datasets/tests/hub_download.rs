//! Downloads from a Hub that stalls: a local HTTP server stands in for huggingface.co
//! (`HF_ENDPOINT`). A file it serves whole is downloaded, checked and read; one whose body stops
//! coming, or whose metadata request is never answered, ends with an error naming the file and
//! `HF_HUB_DOWNLOAD_TIMEOUT` instead of waiting for ever (hf-hub's HTTP clients have no
//! timeouts). A file marked missing by an earlier 404 is asked for again. One test per file:
//! it sets process-wide environment variables.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The served file's bytes.
fn body() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    // The blob's name the Hub gives an LFS file: its SHA-256 (checked by the loader).
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads one request's head: its method and path.
fn request(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut first = text.lines().next()?.split_whitespace();
    Some((first.next()?.to_string(), first.next()?.to_string()))
}

/// Whether `owner/later`'s file exists yet (404 before).
static PUBLISHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Every request's path, in order.
static PATHS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn serve(mut stream: TcpStream) {
    let Some((method, path)) = request(&mut stream) else {
        return;
    };
    PATHS.lock().expect("paths").push(path.clone());
    if path.contains("/later/") && !PUBLISHED.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = stream.write_all(
            format!(
                "HTTP/1.1 404 Not Found\r\nX-Repo-Commit: {COMMIT}\r\nX-Error-Code: \
                 EntryNotFound\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        return;
    }
    let body = body();
    let headers = |length: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nETag: \"{}\"\r\nX-Repo-Commit: {}\r\nContent-Length: {length}\r\n\
             Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
            sha256_hex(&body),
            COMMIT
        )
    };
    if path.contains("/stall-head/") {
        // Never answered.
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    let _ = stream.write_all(headers(body.len()).as_bytes());
    if method == "HEAD" {
        return;
    }
    if path.contains("/stall-body/") {
        // A tenth of the body, then nothing, the connection open.
        let _ = stream.write_all(&body[..body.len() / 10]);
        let _ = stream.flush();
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    let _ = stream.write_all(&body);
}

/// `f` on a thread of its own, which must end within `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("the download should have ended with an error, not waited for ever")
}

#[test]
fn a_stalled_download_ends_with_an_error_and_a_whole_one_is_read() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    let home = tempfile::tempdir().expect("temp dir");
    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::remove_var("HF_TOKEN");
    std::env::set_var("HF_ENDPOINT", format!("http://127.0.0.1:{port}"));
    // Below the floor: the limit is 20 s.
    std::env::set_var("HF_HUB_DOWNLOAD_TIMEOUT", "1");

    let fetch = |repo: &'static str| {
        move || datasets::hub::fetch_model_file(repo, "model.safetensors", "--weights FILE")
    };
    // A whole file: downloaded, its SHA-256 checked, read back.
    let path = within(Duration::from_secs(120), fetch("owner/ok")).expect("downloaded");
    assert_eq!(std::fs::read(&path).expect("the cached file"), body());

    // A revision after the id (timm's `hf-hub:owner/name@revision`) is the one asked for.
    let pinned = within(Duration::from_secs(120), fetch("owner/pinned@v2.1")).expect("pinned");
    assert!(
        PATHS
            .lock()
            .expect("paths")
            .iter()
            .any(|p| p == "/owner/pinned/resolve/v2.1/model.safetensors"),
        "{:?}",
        PATHS.lock()
    );
    assert!(pinned.ends_with(format!("snapshots/{COMMIT}/model.safetensors")));
    let msg = format!("{:#}", fetch("owner/pinned@")().unwrap_err());
    assert!(msg.contains("no revision after the @"), "{msg}");
    // As --weights gives it: a Hub id with a revision is no local path.
    let via_flag = datasets::hub::file_or_hub(
        "owner/pinned@v2.1",
        "model.safetensors",
        "--weights",
        "timm/resnet18.tv_in1k",
    )
    .expect("from the cache");
    assert_eq!(via_flag, pinned);

    // A file the Hub did not have: hf-hub marks it missing in the cache (`.no_exist`), and its
    // cache-only lookup would trust that for ever; once the file is published, the next run
    // asks the Hub again and finds it.
    let msg = format!("{:#}", fetch("owner/later")().unwrap_err());
    assert!(msg.contains("owner/later"), "{msg}");
    let marker = home
        .path()
        .join("hub/models--owner--later/.no_exist")
        .join(COMMIT)
        .join("model.safetensors");
    assert!(marker.exists(), "hf-hub's negative cache entry {marker:?}");
    PUBLISHED.store(true, std::sync::atomic::Ordering::SeqCst);
    let path =
        within(Duration::from_secs(120), fetch("owner/later")).expect("found once published");
    assert_eq!(std::fs::read(&path).expect("the cached file"), body());

    // The two stalls side by side.
    let started = Instant::now();
    let body_stall = std::thread::spawn(move || {
        within(Duration::from_secs(180), fetch("owner/stall-body")).unwrap_err()
    });
    let head_stall = within(Duration::from_secs(180), fetch("owner/stall-head")).unwrap_err();
    let body_stall = body_stall.join().expect("the other download");
    let waited = started.elapsed();
    for (error, got) in [(head_stall, "(0 bytes"), (body_stall, "(20000 bytes")] {
        let msg = format!("{error:#}");
        assert!(
            msg.contains("stalled")
                && msg.contains("model file owner/stall-")
                && msg.contains(got)
                && msg.contains("HF_HUB_DOWNLOAD_TIMEOUT")
                && msg.contains("now 20 s")
                && msg.contains("--weights FILE"),
            "{msg}"
        );
    }
    assert!(waited >= Duration::from_secs(20), "{waited:?}");

    // A limit that is no number of seconds is refused, naming the variable.
    std::env::set_var("HF_HUB_DOWNLOAD_TIMEOUT", "soon");
    let msg = format!("{:#}", fetch("owner/ok2")().unwrap_err());
    assert!(
        msg.contains("HF_HUB_DOWNLOAD_TIMEOUT=soon") && msg.contains("positive number"),
        "{msg}"
    );
}
