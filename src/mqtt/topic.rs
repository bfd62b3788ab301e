//! The MQTT topic layout: `{prefix}/{hub_id}/readings/{kind}` and `{prefix}/{hub_id}/status`.

pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, hub_id: &str) -> Topics {
        Topics {
            base: format!("{prefix}/{hub_id}"),
        }
    }

    /// Where readings of one kind go; `kind` is the outbox label of the record.
    pub fn reading(&self, kind: &str) -> String {
        format!("{}/readings/{kind}", self.base)
    }

    /// The retained hub status, also the last will's topic.
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_contract() {
        let topics = Topics::new("vitalsd/v1", "hub-0001");
        assert_eq!(
            topics.reading("pulse_oximetry"),
            "vitalsd/v1/hub-0001/readings/pulse_oximetry"
        );
        assert_eq!(topics.status(), "vitalsd/v1/hub-0001/status");
    }
}
