//! A TCP relay that delays every byte by a fixed time each way: the round trip of a hub's uplink over a
//! home connection to a broker far away, which a broker on the same machine never has.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub struct LatencyRelay {
    pub port: u16,
    /// While false, connections are accepted and closed at once: the broker is unreachable.
    open: Arc<AtomicBool>,
    /// Bumped by [`LatencyRelay::cut`]: connections accepted before it go silent.
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LatencyRelay {
    /// Relays connections on a free port to `upstream_port` on this machine, delaying each direction by
    /// `one_way`.
    pub fn start(upstream_port: u16, one_way: Duration, open: bool) -> LatencyRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay listener");
        let port = listener.local_addr().expect("relay address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let accept_stop = stop.clone();
        let open = Arc::new(AtomicBool::new(open));
        let accept_open = open.clone();
        let generation = Arc::new(AtomicU64::new(0));
        let accept_generation = generation.clone();
        let thread = std::thread::spawn(move || {
            // Blocking accepts; the drop wakes the last one with a connection of its own.
            for client in listener.incoming() {
                if accept_stop.load(Ordering::SeqCst) {
                    break;
                }
                match client {
                    Ok(client) if !accept_open.load(Ordering::SeqCst) => drop(client),
                    Ok(client) => {
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) {
                            let path = Path {
                                delay: one_way,
                                generation: accept_generation.clone(),
                                born: accept_generation.load(Ordering::SeqCst),
                            };
                            relay(&client, &server, path.clone());
                            relay(&server, &client, path);
                        }
                    }
                    Err(_) => {}
                }
            }
        });
        LatencyRelay {
            port,
            open,
            generation,
            stop,
            thread: Some(thread),
        }
    }

    /// Lets connections through from now on.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// The path of every open connection goes dead without a word, as when a home router loses its uplink
    /// and gets a new address: bytes sent either way are lost, and neither end hears a close or a reset.
    /// New connections go through.
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// How a connection's bytes travel: late by `delay`, and not at all once the relay was cut after it began.
#[derive(Clone)]
struct Path {
    delay: Duration,
    generation: Arc<AtomicU64>,
    born: u64,
}

impl Path {
    fn dead(&self) -> bool {
        self.generation.load(Ordering::SeqCst) != self.born
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in order.
fn relay(from: &TcpStream, to: &TcpStream, path: Path) {
    let delay = path.delay;
    let (mut reader, mut writer) = (
        from.try_clone().expect("clone socket"),
        to.try_clone().expect("clone socket"),
    );
    let (chunks, delayed) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks
                        .send((Instant::now() + delay, buffer[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let closing = to.try_clone().expect("clone socket");
    std::thread::spawn(move || {
        for (due, chunk) in delayed {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if path.dead() {
                continue;
            }
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
        // The reading side closed: pass the end on, as a router would, unless the path is dead.
        if !path.dead() {
            let _ = closing.shutdown(Shutdown::Write);
        }
    });
}

impl Drop for LatencyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
