//! Linux on the net device (kernel level: these run on PVM hosts too): the kernel's own
//! netconsole lines reach the peer through a sandboxed net worker on a tap (`ip=`), and the
//! kernel gets a DHCP lease from passt (`ip=dhcp`). With hardware virtualisation the tap boot's
//! init also pings the peer's side from user space (ignored elsewhere, with the reason). One
//! boot per configuration; skipped with `SVMM_SKIP_LINUX=1`.

use std::sync::OnceLock;
use std::time::Duration;

use tests::netns::NetNs;
use tests::suite::TrialResult;
use tests::{paths, require_kvm, TestVm, VmOutput};

use super::{tap_ns, GATEWAY, UPLINK_CIDR};

/// The Linux command line of the net boots (see tests/tests/linux.rs for the PVM workarounds);
/// with the busybox initramfs the kernel reaches `/init`, and on PVM hosts panics there.
const LINUX_CMDLINE: &str =
    "console=ttyS0 noxsave clearcpuid=cx16,popcnt,smap panic=1 rdinit=/init";
const LINUX_TIMEOUT: Duration = Duration::from_secs(420);

fn linux(ns: &NetNs, cmdline: &str, spec: &str) -> TestVm {
    require_kvm();
    TestVm::svmm(paths::artefact("vmlinux"))
        .initrd(paths::artefact("initramfs.cpio.gz"))
        .cmdline(format!("{LINUX_CMDLINE} {cmdline}"))
        .mem_mib(512)
        .cpus(2)
        .device(spec.to_string())
        .timeout(LINUX_TIMEOUT)
        .wrapper(ns.exec())
}

/// The Linux boot on a sandboxed net worker and a tap, shared by the trials that read it:
/// `ip=` configures eth0, netconsole sends the kernel's log to the peer; with user space
/// (hardware virtualisation) init pings the tap's end. Its output and what the peer received.
struct TapBoot {
    out: VmOutput,
    seen: String,
}

fn tap_boot() -> Result<&'static TapBoot, String> {
    static BOOT: OnceLock<Result<TapBoot, String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let (ns, mut peer) = tap_ns("linux", &["--netconsole", "6666"])?;
        let run = linux(
            &ns,
            "ip=10.77.0.2::10.77.0.1:255.255.255.0::eth0:off \
             netconsole=6665@10.77.0.2/eth0,6666@10.77.0.1/ svmm.net_ping=10.77.0.1",
            "net,tap=tap0",
        )
        .run();
        let seen = peer.stop();
        let out = match run {
            Ok(out) => out,
            Err(e) => match e.output() {
                Some(out) => out.clone(),
                None => return Err(e.to_string()),
            },
        };
        out.log("svmm Linux net (tap, netconsole)");
        // The evidence, for the log: what the peer received and what svmm said.
        let evidence = ["IP-Config", "netconsole:", "virtio", "eth0"];
        for line in seen
            .lines()
            .filter(|l| l.contains("netconsole ") && evidence.iter().any(|e| l.contains(e)))
            .take(12)
        {
            eprintln!("  peer: {line}");
        }
        for line in out.stderr.lines().filter(|l| l.starts_with("svmm: net#0")) {
            eprintln!("  {line}");
        }
        Ok(TapBoot { out, seen })
    })
    .as_ref()
    .map_err(|e| format!("the Linux tap boot failed: {e}"))
}

/// The kernel configured eth0 and logged to the peer over netconsole through the sandboxed
/// worker; it negotiated the offloads and merged buffers it was offered.
pub fn linux_netconsole_tap() -> TrialResult {
    let TapBoot { out, seen } = tap_boot()?;
    out.assert_contains("IP-Config: Complete:");
    out.assert_contains("hwaddr=52:54:00:12:34:56, ipaddr=10.77.0.2, mask=255.255.255.0");
    out.assert_contains("netconsole: network logging started");
    let received: Vec<&str> = seen.lines().filter(|l| l.contains("netconsole ")).collect();
    assert!(
        received.iter().any(|l| l.contains("IP-Config: Complete")),
        "the peer did not receive the kernel's IP-Config line over netconsole\n{seen}"
    );
    let stats = out
        .stderr
        .lines()
        .find(|l| l.starts_with("svmm: net#0 (sandboxed): q0 requests="))
        .ok_or_else(|| format!("no net statistics\n{}", out.report()))?;
    let features = stats
        .rsplit_once("driver features 0x")
        // `0x...`, then `; restarts=N` for a sandboxed device.
        .and_then(|(_, rest)| rest.split(';').next())
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| format!("no driver features in {stats}"))?;
    for (bit, name) in [
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (15, "MRG_RXBUF"),
        (32, "VERSION_1"),
    ] {
        assert!(features & (1 << bit) != 0, "{name} not negotiated: {stats}");
    }
    Ok(())
}

/// With user space (hardware virtualisation only): init reads the features Linux negotiated
/// and pings the tap's end of the link, which answers from the test's namespace.
pub fn linux_userspace_ping_tap() -> TrialResult {
    let TapBoot { out, .. } = tap_boot()?;
    out.assert_contains("SVMM-INIT-OK");
    out.assert_contains("--- net ping 10.77.0.1");
    out.assert_contains("3 packets transmitted, 3 packets received");
    out.assert_contains("svmm-init: ping 10.77.0.1 ok");
    out.assert_status(0);
    Ok(())
}

/// Linux on passt: `ip=dhcp` gets its lease through the device, both directions.
pub fn linux_dhcp_passt() -> TrialResult {
    let ns = NetNs::new("linuxdhcp")?;
    ns.uplink("up0", UPLINK_CIDR, GATEWAY)?;
    let out = linux(&ns, "ip=dhcp", "net,passt").run()?;
    out.log("svmm Linux net (passt, ip=dhcp)");
    for line in out.lines_containing("IP-Config") {
        eprintln!("  console: {line}");
    }
    for line in out.stderr.lines().filter(|l| l.starts_with("svmm: net#0")) {
        eprintln!("  {line}");
    }
    out.assert_contains(&format!(
        "IP-Config: Got DHCP answer from {GATEWAY}, my address is 10.79.0.2"
    ));
    out.assert_contains("IP-Config: Complete:");
    assert!(
        out.lines_containing("Unable to set interface mtu")
            .is_empty(),
        "passt offered an MTU the device does not have\n{}",
        out.report()
    );
    Ok(())
}
