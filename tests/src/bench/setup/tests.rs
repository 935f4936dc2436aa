use super::*;

fn plan() -> Plan {
    Plan {
        reps: 1,
        bench_ms: 300,
        mem_mib: 128,
        guest: "/g/testguest.elf".into(),
        tests: vec!["bench_rng".into(), "bench_rand1".into()],
        images: vec!["/s/disk0.img".into(), "/s/disk1.img".into()],
        image_mib: 256,
        idle_ms: 1500,
        ram: Ram::Shared,
        fs: None,
        wl: None,
        net: None,
        placement: Placement::Free,
    }
}

/// The fs set-up of a bench run with fs tests: the share, `virtiofsd` at `path`, its socket.
fn fs_setup(path: &str, rust: bool) -> FsSetup {
    FsSetup {
        share: "/s/share".into(),
        virtiofsd: Virtiofsd {
            path: path.into(),
            rust,
        },
        socket: "/s/vfsd.sock".into(),
    }
}

#[test]
fn both_vmms_get_the_same_kind_of_guest_ram() {
    for kind in [RunKind::Boot0, RunKind::Bench(Mode::Poll)] {
        let p = plan();
        let qemu = shell_line(&p.vm(Config::Qemu, kind).command());
        assert!(
            qemu.contains("microvm,acpi=off,memory-backend=mem"),
            "{qemu}"
        );
        assert!(
            qemu.contains("-object memory-backend-memfd,id=mem,size=128M,share=on")
                && !qemu.contains("hugetlb"),
            "{qemu}"
        );
        let svmm = shell_line(&p.vm(Config::Sandboxed, kind).command());
        assert!(!svmm.contains("--hugepages"), "{svmm}");
        let huge = Plan {
            ram: Ram::HugeTlb {
                before: 0,
                during: 128,
            },
            ..plan()
        };
        let qemu = shell_line(&huge.vm(Config::Qemu, kind).command());
        assert!(
            qemu.contains(
                "-object memory-backend-memfd,id=mem,size=128M,share=on,hugetlb=on,hugetlbsize=2M"
            ),
            "{qemu}"
        );
        for config in [Config::Sandboxed, Config::InProcess] {
            let svmm = shell_line(&huge.vm(config, kind).command());
            assert!(svmm.contains(" --hugepages"), "{svmm}");
        }
    }
    let said = Ram::HugeTlb {
        before: 0,
        during: 128,
    }
    .describe();
    assert!(
        said.contains("from 0 to 128 for the run and back to 0"),
        "{said}"
    );
}

#[test]
fn command_lines() {
    let p = plan();
    assert_eq!(
        p.cmdline(Config::Sandboxed, RunKind::Boot4),
        "testguest.run=none"
    );
    assert_eq!(
        p.cmdline(Config::Sandboxed, RunKind::Bench(Mode::Poll)),
        "testguest.run=bench_rng,bench_rand1 testguest.irq=poll testguest.bench_ms=300"
    );
    assert!(p
        .cmdline(Config::Sandboxed, RunKind::Bench(Mode::Irq))
        .ends_with("testguest.irq=irq testguest.bench_ms=300 testguest.sleep_ms=1500"));
    let legacy = Plan {
        tests: vec!["rng".into()],
        ..plan()
    };
    assert_eq!(
        legacy.cmdline(Config::Sandboxed, RunKind::Bench(Mode::Poll)),
        "testguest.run=rng"
    );
}

#[test]
fn qemu_gets_the_issues_options_and_the_same_devices() {
    let options = QEMU_OPTIONS.join(" ");
    assert_eq!(
        options,
        "-sandbox on -name bench,debug-threads=on -global virtio-mmio.force-legacy=false -nodefaults -no-user-config -serial stdio"
    );
    assert_eq!(QEMU_MACHINE, "microvm,acpi=off");
    let devices = plan().qemu_devices(RunKind::Bench(Mode::Poll)).join(" ");
    assert_eq!(
        devices,
        "-device virtio-rng-device -device virtio-rng-device \
         -drive id=d0,file=/s/disk0.img,format=raw,if=none,cache=none,aio=native -device virtio-blk-device,drive=d0 \
         -drive id=d1,file=/s/disk1.img,format=raw,if=none,cache=none,aio=native -device virtio-blk-device,drive=d1"
    );
    assert!(plan().qemu_devices(RunKind::Boot0).is_empty());
}

#[test]
fn svmm_configs_differ_only_in_sandbox() {
    let p = plan();
    let sb = p.svmm_devices(Config::Sandboxed, RunKind::Boot4);
    assert_eq!(
        sb,
        [
            "rng",
            "rng",
            "blk=/s/disk0.img,direct=on",
            "blk=/s/disk1.img,direct=on"
        ]
    );
    let off: Vec<String> = sb.iter().map(|d| format!("{d},sandbox=off")).collect();
    assert_eq!(p.svmm_devices(Config::InProcess, RunKind::Boot4), off);
    assert_eq!(
        p.svmm_args(RunKind::Boot4),
        ["--acpi=off", "--report-timings"]
    );
    assert!(p.svmm_devices(Config::Sandboxed, RunKind::Boot0).is_empty());
    assert_eq!(p.svmm_args(RunKind::Boot0), ["--acpi=off"]);
}

#[test]
fn fs_runs_get_the_share_and_qemu_virtiofsd() {
    let p = Plan {
        tests: vec!["bench_fs_meta".into()],
        fs: Some(fs_setup("/usr/lib/qemu/virtiofsd", false)),
        ..plan()
    };
    let bench = RunKind::Bench(Mode::Poll);
    assert_eq!(
        p.svmm_devices(Config::InProcess, bench)
            .last()
            .map(String::as_str),
        Some("fs=/s/share,tag=bench,sandbox=off")
    );
    // Boot runs keep their four devices.
    assert_eq!(p.svmm_devices(Config::Sandboxed, RunKind::Boot4).len(), 4);
    let qemu = p.qemu_devices(bench).join(" ");
    assert!(qemu.ends_with(
        "-chardev socket,id=vfsd,path=/s/vfsd.sock \
         -device vhost-user-fs-device,chardev=vfsd,tag=bench"
    ));
    let cmd = shell_line(&p.vm(Config::Qemu, bench).command());
    assert!(cmd.contains("microvm,acpi=off,memory-backend=mem"), "{cmd}");
    assert!(
        cmd.contains(
            "/usr/lib/qemu/virtiofsd --socket-path=/s/vfsd.sock -o source=/s/share -o cache=auto &"
        ),
        "{cmd}"
    );
    assert_eq!(
        Virtiofsd {
            path: "/v".into(),
            rust: true
        }
        .command(Path::new("/s.sock"), Path::new("/d")),
        [
            "/v",
            "--socket-path=/s.sock",
            "--shared-dir=/d",
            "--cache=auto"
        ]
    );
}

#[test]
fn bench_runs_start_on_the_placements_cpus_and_boot_runs_anywhere() {
    let p = Plan {
        tests: vec!["bench_fs_meta".into(), "bench_net_tx64".into()],
        fs: Some(fs_setup("/v", true)),
        net: Some(NetSetup {
            netns: "ns".into(),
            tap: "tap0".into(),
            vhost: false,
        }),
        placement: Placement::Split {
            vcpu: 0,
            rest: vec![1],
        },
        ..plan()
    };
    for mode in [Mode::Poll, Mode::Irq] {
        let bench = RunKind::Bench(mode);
        let svmm = shell_line(&p.vm(Config::Sandboxed, bench).command());
        assert!(svmm.starts_with("ip netns exec ns taskset -c 1 "), "{svmm}");
        // QEMU's virtiofsd starts under the same mask: the shell that starts it inherits it.
        let qemu = shell_line(&p.vm(Config::Qemu, bench).command());
        assert!(
            qemu.starts_with("ip netns exec ns taskset -c 1 sh -c "),
            "{qemu}"
        );
    }
    for kind in [RunKind::Boot0, RunKind::Boot4] {
        for config in Config::ALL {
            let cmd = shell_line(&p.vm(config, kind).command());
            assert!(!cmd.contains("taskset"), "{cmd}");
        }
    }
}

#[test]
fn wayland_runs_are_svmms_poll_runs() {
    let p = Plan {
        tests: vec![
            "bench_getid".into(),
            "bench_fs_meta".into(),
            "bench_wl_sync".into(),
        ],
        fs: Some(fs_setup("/v", true)),
        wl: Some(WlSetup {
            socket: "/run/w/wayland-1".into(),
            output: WL_OUTPUT,
        }),
        ..plan()
    };
    let poll = RunKind::Bench(Mode::Poll);
    let irq = RunKind::Bench(Mode::Irq);
    assert_eq!(
        p.svmm_devices(Config::InProcess, poll).last().unwrap(),
        "wayland=/run/w/wayland-1,sandbox=off"
    );
    assert_eq!(
        p.device_names(Config::Sandboxed, poll)[4..],
        ["fs#4", "wayland#5"]
    );
    assert_eq!(
        p.device_names(Config::Sandboxed, irq).len(),
        5,
        "fs, no wayland"
    );
    assert!(p.wl_in(Config::Sandboxed, irq).is_none());
    assert!(p.wl_in(Config::Qemu, poll).is_none());
    assert!(p
        .cmdline(Config::Sandboxed, poll)
        .starts_with("testguest.run=bench_getid,bench_fs_meta,bench_wl_sync "));
    assert!(p
        .cmdline(Config::Qemu, poll)
        .starts_with("testguest.run=bench_getid,bench_fs_meta "));
    assert!(p
        .cmdline(Config::InProcess, irq)
        .starts_with("testguest.run=bench_getid,bench_fs_meta "));
    let only_wl = Plan {
        tests: vec!["bench_wl_fps".into()],
        ..p
    };
    assert_eq!(only_wl.cmdline(Config::Qemu, poll), "testguest.run=none");
    assert_eq!(
        only_wl.cmdline(Config::Sandboxed, irq),
        "testguest.run=none testguest.sleep_ms=1500"
    );
}

#[test]
fn net_runs_get_the_tap_and_run_in_the_namespace() {
    let p = Plan {
        tests: vec!["bench_net_tx64".into()],
        net: Some(NetSetup {
            netns: "svmm-bench-1".into(),
            tap: "tap0".into(),
            vhost: false,
        }),
        ..plan()
    };
    let bench = RunKind::Bench(Mode::Irq);
    assert_eq!(
        p.svmm_devices(Config::InProcess, bench)
            .last()
            .map(String::as_str),
        Some("net,tap=tap0,sandbox=off")
    );
    assert!(p.qemu_devices(bench).join(" ").ends_with(
        "-netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off \
         -device virtio-net-device,netdev=n0"
    ));
    for config in Config::ALL {
        let cmd = shell_line(&p.vm(config, bench).command());
        assert!(cmd.starts_with("ip netns exec svmm-bench-1 "), "{cmd}");
        let boot = shell_line(&p.vm(config, RunKind::Boot4).command());
        assert!(!boot.contains("netns"), "{boot}");
    }
    assert_eq!(
        p.device_names(Config::Sandboxed, bench)
            .last()
            .map(String::as_str),
        Some("net#4")
    );
}

#[test]
fn shell_lines_quote_what_needs_it() {
    let mut cmd = Command::new("/usr/bin/qemu");
    cmd.args(["-append", "testguest.run=none x=1", "-m", "128", "it's"]);
    assert_eq!(
        shell_line(&cmd),
        r"/usr/bin/qemu -append 'testguest.run=none x=1' -m 128 'it'\''s'"
    );
}

#[test]
fn images_are_written_in_full() {
    let dir = TempDir::new("bench-images");
    let images = create_images(dir.path(), 2, 1).unwrap();
    assert_eq!(images.len(), 2);
    for image in images {
        let meta = fs::metadata(&image).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= 1 << 20, "sparse image");
    }
}

#[test]
fn tmpfs_is_refused_for_images() {
    if statfs_type(Path::new("/dev/shm")) == Ok(0x0102_1994) {
        let e = scratch_dir(Path::new("/dev/shm")).unwrap_err();
        assert!(e.contains("tmpfs"), "{e}");
    }
}
