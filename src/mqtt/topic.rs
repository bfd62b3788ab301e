//! The MQTT topic layout: `{prefix}/{hub_id}/readings/{kind}`, `{prefix}/{hub_id}/fhir/{kind}` and
//! `{prefix}/{hub_id}/status`.

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
        self.join("/readings/", kind)
    }

    /// Where the FHIR Bundles of readings of one kind go.
    pub fn fhir(&self, kind: &str) -> String {
        self.join("/fhir/", kind)
    }

    /// The base, `middle` and `last` in one allocation of the right size: a drain builds a reading's
    /// topic for every publish, and `format!` grew its string twice and went through the formatting
    /// machinery each time (about a fiftieth of the uplink thread's samples in a profile).
    fn join(&self, middle: &str, last: &str) -> String {
        let mut topic = String::with_capacity(self.base.len() + middle.len() + last.len());
        topic.push_str(&self.base);
        topic.push_str(middle);
        topic.push_str(last);
        topic
    }

    /// A topic under the hub's own, such as `twin` or `cmd/+`.
    pub fn under(&self, subtopic: &str) -> String {
        format!("{}/{subtopic}", self.base)
    }

    /// The part of `topic` under the hub's own, if it is there.
    pub fn strip<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic.strip_prefix(self.base.as_str())?.strip_prefix('/')
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
        assert_eq!(
            topics.fhir("blood_pressure"),
            "vitalsd/v1/hub-0001/fhir/blood_pressure"
        );
        assert_eq!(topics.status(), "vitalsd/v1/hub-0001/status");
        assert_eq!(topics.under("cmd/+"), "vitalsd/v1/hub-0001/cmd/+");
        assert_eq!(topics.strip("vitalsd/v1/hub-0001/cmd/r1"), Some("cmd/r1"));
        assert_eq!(topics.strip("vitalsd/v1/hub-00012/cmd/r1"), None);
        assert_eq!(topics.strip("vitalsd/v1/hub-0002/cmd/r1"), None);
    }
}
