//! The uplink's security settings against a real broker: TLS with a CA file and a client certificate,
//! a username with the password from a file, and a broker that refuses us.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::broker::Broker;
use crate::support::daemon::{DaemonWorld, SerialEntry};
use crate::support::nonin::SpotCheck;
use crate::support::pty::SimulatedPort;
use crate::support::subscriber::Subscriber;
use crate::support::wait_until;

#[track_caller]
fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?}: {e} (install openssl and mosquitto-clients)")
    });
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI.
fn make_certificates(dir: &Path) {
    // Made once per broker directory: a broker started again on fresh ports keeps them.
    if dir.join("client.crt").exists() {
        return;
    }
    let openssl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=vitalsd test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    for (name, extension) in [
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN=vitalsd test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        std::fs::write(dir.join(format!("{name}.ext")), extension).unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }
}

struct SecureRig {
    broker: Broker,
    tls_port: u16,
    /// The hub's password at the broker, random so that finding it in a log cannot be a coincidence.
    password: String,
    subscriber: Subscriber,
    world: DaemonWorld,
    port: SimulatedPort,
}

/// A broker with a plain anonymous listener (for the test's subscriber) and a TLS listener that wants a
/// client certificate and a password.
fn secure_rig() -> SecureRig {
    let password = secret();
    let broker = Broker::start_custom_ports(1, |port, extra, dir| {
        let tls_port = extra[0];
        make_certificates(dir);
        run(Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(dir.join("passwords"))
            .args(["hub", &password]));
        format!(
            "per_listener_settings true\n{}\
             listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwords\n\
             cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\nrequire_certificate true\n\
             log_dest stderr\nlog_type error\nlog_type warning\n",
            crate::support::broker::STAY_AS_INVOKING_USER,
            d = dir.display()
        )
    });
    let tls_port = broker.extra_ports[0];
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let port = SimulatedPort::plug_in(&world.by_id("usb-Nonin_9560-if00-port0"));
    SecureRig {
        broker,
        tls_port,
        password,
        subscriber,
        world,
        port,
    }
}

/// A password nobody would write into a message by chance.
fn secret() -> String {
    format!("pw-{:016x}", fastrand::u64(..))
}

fn write_config(rig: &SecureRig, password: &str) {
    let password_file = rig.world.dir.path().join("mqtt-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let d = rig.broker.dir().display();
    let lines = [
        "username = \"hub\"".to_string(),
        format!("password_file = \"{}\"", password_file.display()),
        format!("ca_file = \"{d}/ca.crt\""),
        format!("client_cert_file = \"{d}/client.crt\""),
        format!("client_key_file = \"{d}/client.key\""),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    rig.world.write_config(
        &format!("mqtts://127.0.0.1:{}", rig.tls_port),
        &lines,
        &[SerialEntry {
            path: rig.port.link().to_path_buf(),
            protocol: "nonin-df13",
            id: None,
            extra: vec![],
        }],
    );
}

#[test]
fn readings_arrive_over_tls_with_a_client_certificate_and_a_password_from_a_file() {
    let mut rig = secure_rig();
    write_config(&rig, &rig.password);
    let _daemon = rig.world.start();
    rig.port.write(&SpotCheck::numbered(5).frame());
    assert!(
        rig.subscriber
            .wait_for_unique_readings(1, Duration::from_secs(30)),
        "log:\n{}\nbroker:\n{}",
        rig.world.log(),
        rig.broker.log()
    );
    assert!(
        !rig.world.log().contains(&rig.password),
        "the password reached the log"
    );
}

#[test]
fn a_broker_that_refuses_our_password_is_reported_and_readings_wait() {
    let mut rig = secure_rig();
    let wrong = secret();
    write_config(&rig, &wrong);
    let _daemon = rig.world.start();
    rig.port.write(&SpotCheck::numbered(6).frame());
    let reported = wait_until(Duration::from_secs(30), || {
        let status = rig.world.status();
        status["outbox"]["pending"] == 1
            && status["uplink"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused"))
    });
    assert!(reported, "{}\n{}", rig.world.status(), rig.world.log());
    assert!(rig.subscriber.readings().is_empty());
    assert!(
        !rig.world.log().contains(&wrong),
        "the password reached the log"
    );
}
