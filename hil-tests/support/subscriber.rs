//! An MQTT subscriber that records every message, reconnecting on its own; what a backend would see.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
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
    stop: Arc<AtomicBool>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let client_id = format!("test-sub-{}", fastrand::u64(..));
        let (thread_messages, thread_connected, thread_stop) =
            (messages.clone(), connected.clone(), stop.clone());
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
                while !thread_stop.load(Ordering::Relaxed) {
                    let event =
                        tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await;
                    match event {
                        Err(_) => continue,
                        Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                            // Subscribing again is harmless when the session survived, and needed when it did not.
                            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                        Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => {
                            thread_connected.store(true, Ordering::SeqCst)
                        }
                        Ok(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                            if publish.topic.contains("/readings/") {
                                let id =
                                    serde_json::from_slice::<serde_json::Value>(&publish.payload)
                                        .ok()
                                        .and_then(|json| json["id"].as_str().map(str::to_string))
                                        .unwrap_or_else(|| "<reading without an id>".to_string());
                                *thread_counts.lock().unwrap().entry(id).or_insert(0) += 1;
                            }
                            thread_messages.lock().unwrap().push(Message {
                                topic: publish.topic.clone(),
                                payload: publish.payload.to_vec(),
                                retained: publish.retain,
                                arrived: Instant::now(),
                            });
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => {
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
            stop,
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

    /// How many times each reading id arrived.
    pub fn reading_counts(&self) -> BTreeMap<String, usize> {
        self.counts.lock().unwrap().clone()
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
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
