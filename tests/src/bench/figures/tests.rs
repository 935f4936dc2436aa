use super::*;

fn all_tests() -> Vec<String> {
    BENCH_TESTS
        .iter()
        .chain(&WL_BENCH_TESTS)
        .map(|t| t.to_string())
        .collect()
}

#[test]
fn catalogue_keys_are_unique_and_complete() {
    let figures = catalogue(&all_tests());
    let mut keys: Vec<&str> = figures.iter().map(|f| f.key.as_str()).collect();
    keys.sort_unstable();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "duplicate figure keys");
    for key in [
        "boot0.first_line",
        "boot4.exit",
        "spawn.blk#3",
        "poll.bench_rand1.iops",
        "irq.bench_getid.p99_ns",
        "irq.bench_cpu.irq_ns",
        "mem.worker.rng#0",
        "mem.total",
    ] {
        assert!(keys.contains(&key), "{key} missing");
    }
    // The functional rng test is only there when asked for.
    assert!(!keys.contains(&"poll.rng.kib_s"));
    assert!(catalogue(&["rng".into()])
        .iter()
        .any(|f| f.key == "poll.rng.kib_s"));
}

#[test]
fn scopes() {
    let figures = catalogue(&all_tests());
    let get = |k: &str| figures.iter().find(|f| f.key == k).unwrap();
    assert!(!get("spawn.rng#0").applies(Config::Qemu));
    assert!(get("spawn.rng#0").applies(Config::InProcess));
    assert!(!get("mem.worker.blk#2").applies(Config::InProcess));
    assert!(get("mem.vmm").applies(Config::Qemu));
    // virtio-wl: svmm's, polling only; its worker spawns in the poll runs only, after fs.
    assert!(get("poll.bench_wl_sync.p99_ns").applies(Config::InProcess));
    assert!(!get("poll.bench_wl_fps.fps_x100").applies(Config::Qemu));
    assert!(!figures.iter().any(|f| f.key.starts_with("irq.bench_wl_")));
    assert!(get("spawn.wayland#5").applies(Config::Sandboxed));
    assert!(!figures.iter().any(|f| f.key == "mem.worker.wayland#5"));
    assert_eq!(devices(false, false, true).last().unwrap(), "wayland#4");
    assert_eq!(
        devices(true, true, true)[4..],
        ["fs#4", "net#5", "wayland#6"]
    );
    assert_eq!(devices(false, true, false).last().unwrap(), "net#4");
}

#[test]
fn wayland_lines_are_checked() {
    let f = fields("mode=poll width=1280 height=720 frames=120 us=2000000 fps_x100=6000 p50_ns=16600000 p99_ns=17000000 mean_ns=16666666");
    let s = guest_samples("bench_wl_fps", &f, Mode::Poll).unwrap();
    assert!(
        s.contains(&("poll.bench_wl_fps.fps_x100".into(), 60.0)),
        "{s:?}"
    );
    let frame = s
        .iter()
        .find(|(k, _)| k == "poll.bench_wl_fps.p50_ns")
        .unwrap();
    assert!((frame.1 - 16.6).abs() < 1e-9, "{frame:?}");
    let f = fields("mode=poll requests=100 p50_ns=80000 mean_ns=90000");
    let e = guest_samples("bench_wl_sync", &f, Mode::Poll).unwrap_err();
    assert_eq!(e, "no p99_ns=");
}

#[test]
fn result_lines_are_found_and_split() {
    let lines = [
        "testguest: bench_rand1 ok mode=poll depth=1 requests=100 us=5000 iops=20000 p50_ns=45000 p99_ns=90000",
        "testguest: bench_rand16 FAIL timeout interrupt=0",
        "testguest: bench_rng1 ok x=1",
    ];
    let Some(TestLine::Ok(f, line)) = find_result(lines, "bench_rand1") else {
        panic!("not found");
    };
    assert_eq!(f["iops"], "20000");
    assert!(line.ends_with("p99_ns=90000"));
    assert_eq!(
        find_result(lines, "bench_rand16"),
        Some(TestLine::Fail("timeout interrupt=0".into()))
    );
    // `bench_rng1` is not `bench_rng`.
    assert_eq!(find_result(lines, "bench_rng"), None);
}

#[test]
fn samples_are_scaled_and_checked() {
    let f = fields("mode=poll depth=1 requests=100 us=5000 iops=20000 p50_ns=45000 p99_ns=90500");
    let s = guest_samples("bench_rand1", &f, Mode::Poll).unwrap();
    assert!(s.contains(&("poll.bench_rand1.iops".into(), 20000.0)));
    assert!(s.contains(&("poll.bench_rand1.p99_ns".into(), 90.5)));
    let e = guest_samples("bench_rand1", &f, Mode::Irq).unwrap_err();
    assert!(e.contains("mode=poll, asked for irq"), "{e}");
    let f = fields("mode=irq req_bytes=4096 depth=8 requests=10 bytes=40960 us=100");
    let e = guest_samples("bench_rng", &f, Mode::Irq).unwrap_err();
    assert_eq!(e, "no kib_s=");
    let f = fields("mode=irq req_bytes=4096 depth=8 requests=10 bytes=40960 us=100 kib_s=1000000");
    let s = guest_samples("bench_rng", &f, Mode::Irq).unwrap();
    assert_eq!(s, [("irq.bench_rng.kib_s".to_string(), 1024.0)]);
    // bench_cpu: mmio_read_ns is optional, the others are not.
    let f = fields("loop_ring0_ps=1300000 loop_ring3_ps=350 driver_ring3_ns=40 irq_ns=2000");
    let s = guest_samples("bench_cpu", &f, Mode::Poll).unwrap();
    assert_eq!(s.len(), 4);
    let ring3 = s
        .iter()
        .find(|(k, _)| k == "poll.bench_cpu.loop_ring3_ps")
        .unwrap();
    assert!((ring3.1 - 0.35).abs() < 1e-12, "{ring3:?}");
    let f = fields("loop_ring0_ps=x loop_ring3_ps=350 driver_ring3_ns=40");
    let e = guest_samples("bench_cpu", &f, Mode::Poll).unwrap_err();
    assert!(e.contains("loop_ring0_ps=x is not an integer") && e.contains("no irq_ns="));
}

#[test]
fn ring3_must_pass_every_check() {
    let f = fields("ud2_return=1 page_fault=1 irq_in_ring3=1 irqs=10");
    assert_eq!(guest_samples("ring3", &f, Mode::Irq), Ok(Vec::new()));
    let f = fields("ud2_return=1 page_fault=1 irq_in_ring3=0 irqs=0");
    let e = guest_samples("ring3", &f, Mode::Irq).unwrap_err();
    assert_eq!(e, "irq_in_ring3=0, must be 1");
    let e = guest_samples("ring3", &fields("ud2_return=1"), Mode::Irq).unwrap_err();
    assert!(e.contains("no page_fault="), "{e}");
}

#[test]
fn spawn_lines_are_parsed() {
    let stderr = "svmm: timing device=rng#0 spawn_us=4301\nsvmm: other\n\
                  svmm: timing device=blk#2 spawn_us=2511\nsvmm: timing device=x spawn_us=?\n";
    assert_eq!(
        spawn_lines(stderr),
        [("rng#0".to_string(), 4301), ("blk#2".to_string(), 2511)]
    );
}
