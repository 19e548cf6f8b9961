//! A TCP proxy that reads the PostgreSQL protocol going through it and counts
//! round trips: how often a client had to wait for the server before it could
//! go on. Statements sent together (pipelined) share one round trip.
//!
//! A round trip starts with a client message sent while the client waits for
//! nothing (every `Query` and `Sync` it sent has had its `ReadyForQuery`), and
//! holds every message sent until then. The startup and authentication, up to
//! the first `ReadyForQuery`, are the connection's, not a round trip. Messages
//! are read before they are forwarded, so a `ReadyForQuery` is counted before
//! the client can act on it. Connections must not use TLS (`sslmode=disable`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The protocol code of a CancelRequest in place of a startup packet.
const CANCEL_REQUEST: u32 = 80_877_102;

/// What one client connection did.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// A cancel request, not a session.
    pub cancel: bool,
    /// The statements of each round trip, `Q: ...` for a simple query and
    /// `P: ...` for a parsed one; a round trip of Binds and Syncs alone
    /// (`COMMIT` is a Query) holds an empty list.
    pub round_trips: Vec<Vec<String>>,
    /// Client messages sent and not yet answered by a ReadyForQuery: the
    /// startup packet counts as one.
    outstanding: i64,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
}

impl Session {
    /// Whether any statement of the session contains `text`.
    pub fn ran(&self, text: &str) -> bool {
        self.round_trips.iter().flatten().any(|s| s.contains(text))
    }

    /// The round trips, one line each, for a failing test to show.
    pub fn describe(&self) -> String {
        self.round_trips
            .iter()
            .enumerate()
            .map(|(i, statements)| format!("  RT{}: {}", i + 1, statements.join(" | ")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn client_message(&mut self, kind: u8, body: &[u8]) {
        if kind == b'X' {
            return;
        }
        if self.outstanding == 0 && !self.unsynced {
            self.round_trips.push(Vec::new());
        }
        let text = |bytes: &[u8]| {
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        };
        let statement = match kind {
            b'Q' => Some(format!("Q: {}", text(body))),
            b'P' => {
                let name_end = body.iter().position(|&b| b == 0).unwrap_or(0);
                Some(format!("P: {}", text(&body[name_end + 1..])))
            }
            _ => None,
        };
        if let (Some(statement), Some(current)) = (statement, self.round_trips.last_mut()) {
            current.push(statement);
        }
        match kind {
            b'Q' | b'S' => {
                self.outstanding += 1;
                self.unsynced = false;
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => self.unsynced = true,
            _ => {}
        }
    }

    fn server_message(&mut self, kind: u8) {
        if kind == b'Z' {
            self.outstanding -= 1;
        }
    }
}

/// The round trips of `sessions`, numbered, for a failing test to show.
pub fn describe(sessions: &[Session]) -> String {
    sessions
        .iter()
        .enumerate()
        .map(|(i, s)| format!("session {}:\n{}", i + 1, s.describe()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A proxy on 127.0.0.1 in front of a local port, recording every session.
pub struct CountingProxy {
    port: u16,
    sessions: Arc<Mutex<Vec<Arc<Mutex<Session>>>>>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    _acceptor: JoinHandle<()>,
}

impl CountingProxy {
    pub fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port");
        let port = listener.local_addr().unwrap().port();
        let sessions: Arc<Mutex<Vec<Arc<Mutex<Session>>>>> = Arc::default();
        let sockets: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let (sessions, sockets) = (sessions.clone(), sockets.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { return };
                    let server = TcpStream::connect(("127.0.0.1", target_port)).unwrap();
                    let session = Arc::new(Mutex::new(Session {
                        outstanding: 1,
                        ..Session::default()
                    }));
                    sessions.lock().unwrap().push(session.clone());
                    for socket in [&client, &server] {
                        sockets.lock().unwrap().push(socket.try_clone().unwrap());
                    }
                    pump(client.try_clone().unwrap(), server.try_clone().unwrap(), {
                        let session = session.clone();
                        let mut reader = MessageReader::startup();
                        move |bytes: &[u8]| {
                            reader.feed(bytes, |kind, body| {
                                let mut session = session.lock().unwrap();
                                match kind {
                                    None => session.cancel = read_u32(body, 0) == CANCEL_REQUEST,
                                    Some(kind) => session.client_message(kind, body),
                                }
                            })
                        }
                    });
                    pump(server, client, {
                        let mut reader = MessageReader::typed();
                        move |bytes: &[u8]| {
                            reader.feed(bytes, |kind, _| {
                                if let Some(kind) = kind {
                                    session.lock().unwrap().server_message(kind);
                                }
                            })
                        }
                    });
                }
            })
        };
        Self {
            port,
            sessions,
            sockets,
            _acceptor: acceptor,
        }
    }

    /// A `postgres://` URL for `database` through the proxy, without TLS.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// The sessions so far (cancel requests left out), and forgets them.
    pub fn take_sessions(&self) -> Vec<Session> {
        self.sessions
            .lock()
            .unwrap()
            .drain(..)
            .map(|session| session.lock().unwrap().clone())
            .filter(|session| !session.cancel)
            .collect()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        for socket in self.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // The acceptor blocks in accept: one last connection ends it.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to`, showing each chunk to `inspect` before it goes on.
fn pump(mut from: TcpStream, mut to: TcpStream, mut inspect: impl FnMut(&[u8]) + Send + 'static) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    inspect(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Splits a byte stream into protocol messages: a startup packet first (no
/// type byte) on the client's side, typed messages after.
struct MessageReader {
    buffer: Vec<u8>,
    startup: bool,
}

impl MessageReader {
    fn startup() -> Self {
        Self {
            buffer: Vec::new(),
            startup: true,
        }
    }

    fn typed() -> Self {
        Self {
            buffer: Vec::new(),
            startup: false,
        }
    }

    /// Adds `bytes` and calls `message(type, body)` for each whole message;
    /// the startup packet has no type.
    fn feed(&mut self, bytes: &[u8], mut message: impl FnMut(Option<u8>, &[u8])) {
        self.buffer.extend_from_slice(bytes);
        loop {
            let header = if self.startup { 4 } else { 5 };
            if self.buffer.len() < header {
                return;
            }
            let length = read_u32(&self.buffer, header - 4) as usize;
            let total = header - 4 + length;
            if self.buffer.len() < total {
                return;
            }
            let kind = (!self.startup).then(|| self.buffer[0]);
            message(kind, &self.buffer[header..total]);
            self.buffer.drain(..total);
            self.startup = false;
        }
    }
}
