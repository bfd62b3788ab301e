//! What only an MQTT 5 client can see, which the 3.1.1 [`super::subscriber::Subscriber`] cannot: the
//! properties a message arrives with, and whether the broker kept a session for a client id.
//!
//! The properties are read by Mosquitto's own `mosquitto_sub`, so the daemon's encoding is checked by a
//! decoder that shares no code with the client library the daemon uses.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// A message as an MQTT 5 subscriber received it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub topic: String,
    /// The QoS it was delivered with: the lower of the publisher's and the subscription's (1).
    pub qos: u64,
    /// The retain flag as delivered: set only on a retained message sent because of a new subscription.
    pub retained: bool,
    /// Its properties by Mosquitto's names (`user-properties`, `message-expiry-interval`, `content-type`,
    /// `payload-format-indicator`, …); empty when it has none.
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub payload: String,
}

impl Delivered {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|e| panic!("payload on {} is not JSON: {e}", self.topic))
    }

    /// Mosquitto's JSON line for one message (`mosquitto_sub -F %j`), or `None` for any other line.
    fn parse(line: &str) -> Option<Delivered> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(Delivered {
            topic: value["topic"].as_str()?.to_string(),
            qos: value["qos"].as_u64()?,
            retained: value["retain"].as_u64()? == 1,
            properties: value["properties"].as_object().cloned().unwrap_or_default(),
            payload: value["payload"].as_str()?.to_string(),
        })
    }
}

/// `mosquitto_sub -V mqttv5` subscribed at QoS 1, recording every message with its properties.
pub struct PropertySubscriber {
    child: Child,
    messages: Arc<Mutex<Vec<Delivered>>>,
    /// Everything it printed that is not a message (its debug lines, its errors), for failure reports.
    transcript: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl PropertySubscriber {
    /// Subscribes to `filter` on the broker at `port` and returns once the broker granted the subscription,
    /// so nothing published afterwards can be missed.
    pub fn start(port: u16, filter: &str) -> PropertySubscriber {
        let client_id = format!("test-v5-sub-{}", fastrand::u64(..));
        // Line-buffered through `stdbuf`: into a pipe, mosquitto_sub flushes its messages but not its debug
        // lines, and the start waits for one of those. `stdbuf` executes mosquitto_sub in its own place, so
        // the process this holds, and kills, is mosquitto_sub.
        let mut child = super::dies_with_test(&mut Command::new("stdbuf"))
            .args([
                "-oL",
                "mosquitto_sub",
                "-V",
                "mqttv5",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args(["-i", &client_id, "-t", filter, "-q", "1"])
            // One JSON line per message, properties included; `-d` adds the SUBACK the start waits for.
            .args(["-F", "%j", "-d"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run mosquitto_sub ({e}); install it with: sudo apt-get install \
                     mosquitto-clients"
                )
            });
        let messages = Arc::new(Mutex::new(Vec::new()));
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let stdout = child.stdout.take().expect("mosquitto_sub stdout");
        let stderr = child.stderr.take().expect("mosquitto_sub stderr");
        let readers = vec![
            {
                let (messages, transcript, subscribed) =
                    (messages.clone(), transcript.clone(), subscribed.clone());
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                        if let Some(message) = Delivered::parse(&line) {
                            messages.lock().unwrap().push(message);
                            continue;
                        }
                        // `Subscribed (mid: 1): 1`: the broker granted QoS 1.
                        if line.starts_with("Subscribed (mid:") {
                            subscribed.store(true, Ordering::SeqCst);
                        }
                        transcript.lock().unwrap().push(line);
                    }
                })
            },
            {
                let transcript = transcript.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        transcript.lock().unwrap().push(line);
                    }
                })
            },
        ];
        let subscriber = PropertySubscriber {
            child,
            messages,
            transcript,
            readers,
        };
        super::wait_for(
            &format!("mosquitto_sub's subscription to {filter} on port {port}"),
            Duration::from_secs(10),
            || subscribed.load(Ordering::SeqCst),
            || subscriber.transcript(),
        );
        subscriber
    }

    pub fn messages(&self) -> Vec<Delivered> {
        self.messages.lock().unwrap().clone()
    }

    /// What mosquitto_sub printed besides messages.
    pub fn transcript(&self) -> String {
        self.transcript.lock().unwrap().join("\n")
    }

    /// Waits for the first message that satisfies `wanted` and returns it; fails the test after
    /// `timeout`, naming `what` and showing what arrived and what `context` says (the daemon's log).
    #[track_caller]
    pub fn wait_for_message(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&Delivered) -> bool,
        context: impl FnOnce() -> String,
    ) -> Delivered {
        let mut found = None;
        super::wait_for(
            what,
            timeout,
            || {
                found = self.messages().into_iter().find(&wanted);
                found.is_some()
            },
            || {
                format!(
                    "arrived: {:#?}\nmosquitto_sub:\n{}\n{}",
                    self.messages(),
                    self.transcript(),
                    context()
                )
            },
        );
        found.expect("wait_for returned, so a message was found")
    }
}

impl Drop for PropertySubscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its pipes close with it, so the readers end.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// Whether the broker at `port` still holds a session for `client_id`: connects as that client asking to
/// resume (clean start off) and reads the CONNACK's session-present flag. Mosquitto sets the flag only for
/// a session that was meant to outlive its connection (session expiry interval above zero), also while it
/// has yet to notice that connection closed, so the answer does not depend on how quickly it noticed. The
/// probe asks for expiry 0 itself and so leaves nothing behind.
pub fn session_present(port: u16, client_id: &str) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(0));
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        let connack = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => return connack,
                    Ok(_) => {}
                    Err(error) => panic!("session probe as {client_id} on port {port}: {error}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no CONNACK for the session probe as {client_id} in 10 s"));
        // A clean goodbye, so the broker is done with the probe before the caller goes on.
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Outgoing(rumqttc::Outgoing::Disconnect) = event {
                    break;
                }
            }
        })
        .await;
        connack.session_present
    })
}
