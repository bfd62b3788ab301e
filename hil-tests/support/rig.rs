//! The starting point most serial scenarios share: a broker, a subscriber to everything under the topic
//! prefix, and a daemon's private world, into which simulated devices are plugged.

use super::broker::Broker;
use super::daemon::{DaemonWorld, SerialEntry};
use super::pty::SimulatedPort;
use super::subscriber::Subscriber;

pub struct Lab {
    pub broker: Broker,
    pub subscriber: Subscriber,
    pub world: DaemonWorld,
}

impl Lab {
    pub fn new() -> Lab {
        let broker = Broker::start();
        let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
        Lab {
            broker,
            subscriber,
            world: DaemonWorld::new(),
        }
    }

    /// Plugs in a simulated device behind the by-id style link `name`.
    pub fn plug_in(&self, name: &str) -> SimulatedPort {
        SimulatedPort::plug_in(&self.world.by_id(name))
    }

    /// Writes a configuration that reads `serial` and delivers to the lab's broker.
    pub fn configure(&self, serial: &[SerialEntry]) {
        self.world.write_config(&self.broker.url(), &[], serial);
    }

    /// The readings of one protocol, in arrival order.
    pub fn readings_of(&self, protocol: &str) -> Vec<serde_json::Value> {
        self.subscriber
            .readings()
            .into_iter()
            .filter(|r| r["device"]["protocol"] == protocol)
            .collect()
    }
}
