//! Turns the hardware-in-the-loop variables into cfgs, so the `hil` suite's hardware tests are compiled as
//! ignored ("skipped: set …") when no device is named, and run when one is: libtest has no run-time skip,
//! and a test that returns early would count as passed.

/// A variable, and the value it must have (`None`: any non-empty value).
type Wanted = (&'static str, Option<&'static str>);

/// Each cfg, and the variables that must all be set for it.
const HARDWARE: &[(&str, &[Wanted])] = &[
    ("vitalsd_hil_serial", &[("VITALSD_HIL_SERIAL_PATH", None)]),
    (
        "vitalsd_hil_serial_replug",
        &[
            ("VITALSD_HIL_SERIAL_PATH", None),
            ("VITALSD_HIL_REPLUG", Some("1")),
        ],
    ),
    (
        "vitalsd_hil_contec",
        &[
            ("VITALSD_HIL_SERIAL_PATH", None),
            ("VITALSD_HIL_SERIAL_PROTOCOL", Some("contec-cms50")),
        ],
    ),
    (
        "vitalsd_hil_serial_pair",
        &[
            ("VITALSD_HIL_SERIAL_PATH", None),
            ("VITALSD_HIL_SERIAL_PATH_2", None),
            ("VITALSD_HIL_SERIAL_PROTOCOL_2", None),
        ],
    ),
    (
        "vitalsd_hil_ble",
        &[
            ("VITALSD_HIL_BLE_ADAPTER", None),
            ("VITALSD_HIL_BLE_ADDRESS", None),
        ],
    ),
];

fn main() {
    for (cfg, variables) in HARDWARE {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        let set = variables.iter().all(|(name, wanted)| {
            println!("cargo::rerun-if-env-changed={name}");
            match (std::env::var(name), wanted) {
                (Ok(value), None) => !value.is_empty(),
                (Ok(value), Some(wanted)) => value == *wanted,
                (Err(_), _) => false,
            }
        });
        if set {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
