//! An MQTT subscriber that records every message, reconnecting on its own; what a backend would see.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retained: bool,
    pub arrived: Instant,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("payload on {} is not JSON: {e}", self.topic))
    }
}

pub struct Subscriber {
    messages: Arc<Mutex<Vec<Message>>>,
    /// Arrivals per reading id, kept as messages come so that waiting for thousands stays cheap.
    counts: Arc<Mutex<BTreeMap<String, usize>>>,
    connected: Arc<AtomicBool>,
    /// How many times the broker accepted the subscriber's connection: more than one means a reconnection,
    /// after which the broker rightly sends again what the subscriber had not acknowledged.
    connections: Arc<AtomicUsize>,
    /// Reading messages the broker sent again after this subscriber's own reconnection (the DUP flag):
    /// copies the hub never sent twice.
    redelivered: Arc<AtomicUsize>,
    /// Why the connection ended, each time it did.
    errors: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Subscribes to `filter` at QoS 1 with a persistent session, so messages published while it is
    /// reconnecting after a broker restart are queued for it rather than lost.
    pub fn start(port: u16, filter: &str) -> Subscriber {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let thread_counts = counts.clone();
        let connected = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let redelivered = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (thread_redelivered, thread_errors) = (redelivered.clone(), errors.clone());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let client_id = format!("test-sub-{}", fastrand::u64(..));
        let (thread_messages, thread_connected, thread_connections) =
            (messages.clone(), connected.clone(), connections.clone());
        let filter = filter.to_string();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
                options.set_clean_session(false);
                options.set_keep_alive(Duration::from_secs(5));
                options.set_max_packet_size(1024 * 1024, 1024 * 1024);
                let (client, mut eventloop) = AsyncClient::new(options, 100);
                loop {
                    // The event loop is only ever cancelled here, when the test is done: cancelling
                    // `poll` while it writes acknowledgements can corrupt the stream, and the broker's
                    // disconnection that follows makes it send unacknowledged readings a second time.
                    let event = tokio::select! {
                        _ = &mut stopped => break,
                        event = eventloop.poll() => event,
                    };
                    match event {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            thread_connections.fetch_add(1, Ordering::SeqCst);
                            // Subscribing again is harmless when the session survived, and needed when it did not.
                            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Incoming::SubAck(_))) => {
                            thread_connected.store(true, Ordering::SeqCst)
                        }
                        Ok(Event::Incoming(Incoming::Publish(publish))) => {
                            if publish.topic.contains("/readings/") {
                                let id =
                                    serde_json::from_slice::<serde_json::Value>(&publish.payload)
                                        .ok()
                                        .and_then(|json| json["id"].as_str().map(str::to_string))
                                        .unwrap_or_else(|| "<reading without an id>".to_string());
                                *thread_counts.lock().unwrap().entry(id).or_insert(0) += 1;
                                if publish.dup {
                                    thread_redelivered.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            thread_messages.lock().unwrap().push(Message {
                                topic: publish.topic.clone(),
                                payload: publish.payload.to_vec(),
                                retained: publish.retain,
                                arrived: Instant::now(),
                            });
                        }
                        Ok(_) => {}
                        Err(error) => {
                            thread_errors.lock().unwrap().push(error.to_string());
                            thread_connected.store(false, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        });
        let subscriber = Subscriber {
            messages,
            counts,
            connected,
            connections,
            redelivered,
            errors,
            stop: Some(stop),
            thread: Some(thread),
        };
        assert!(
            super::wait_until(Duration::from_secs(10), || subscriber
                .connected
                .load(Ordering::SeqCst)),
            "test subscriber could not subscribe on port {port}"
        );
        subscriber
    }

    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// Reading messages (payloads with an `id`), in arrival order.
    /// Every one is checked against the payload's JSON Schema on the way.
    pub fn readings(&self) -> Vec<serde_json::Value> {
        self.messages()
            .iter()
            .filter(|m| m.topic.contains("/readings/"))
            .map(Message::json)
            .inspect(super::schema::assert_valid_reading)
            .collect()
    }

    /// How many times the broker accepted this subscriber's connection.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How many reading messages the broker sent again after this subscriber reconnected.
    pub fn redelivered(&self) -> usize {
        self.redelivered.load(Ordering::SeqCst)
    }

    /// Why this subscriber's connection ended, each time it did.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// How many times each reading id arrived.
    pub fn reading_counts(&self) -> BTreeMap<String, usize> {
        self.counts.lock().unwrap().clone()
    }

    /// How many distinct reading ids arrived, without copying them (cheap enough to poll for thousands).
    pub fn unique_reading_count(&self) -> usize {
        self.counts.lock().unwrap().len()
    }

    pub fn unique_reading_ids(&self) -> BTreeSet<String> {
        self.reading_counts().into_keys().collect()
    }

    /// Waits until at least `count` distinct reading ids arrived, then checks every reading against the
    /// payload schema.
    pub fn wait_for_unique_readings(&self, count: usize, timeout: Duration) -> bool {
        let arrived = super::wait_until(timeout, || self.counts.lock().unwrap().len() >= count);
        if arrived {
            self.readings();
        }
        arrived
    }

    /// Waits until the reading measured at `measured_at` arrived: a sentinel, written after what a test
    /// checks, so that anything the daemon published before it has arrived too.
    pub fn wait_for_measured_at(&self, measured_at: &str, timeout: Duration) -> bool {
        super::wait_until(timeout, || {
            self.readings()
                .iter()
                .any(|r| r["measured_at"] == measured_at)
        })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
