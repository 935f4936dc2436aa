//! Every out-queue command: what it does, what it answers, what it refuses.

use std::sync::atomic::Ordering;

use rustix::fs::SealFlags;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::services::ServiceRefusal;
use crate::{DeviceError, VIRTIO_F_RING_EVENT_IDX, VIRTIO_ID_WL};

#[test]
fn identity_and_activation() {
    let rig = Rig::new();
    assert_eq!(rig.wl.device_type(), VIRTIO_ID_WL);
    assert_eq!(rig.wl.num_queues(), 2);
    assert_eq!(rig.wl.features() & FEATURES, FEATURES);
    assert_eq!(rig.wl.features() & F_SEND_FENCES, 0);
    assert!(rig.wl.config().is_empty());

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mut wl = Wl::new(REGION, Box::new(FakeServices::default()));
    let irq = Arc::new(Irqs::default());
    let one = |base| {
        let vq = MockSplitQueue::create(&mem, GuestAddress(base), QSIZE);
        vq.create_queue::<Queue>().unwrap()
    };
    assert!(matches!(
        wl.activate(VIRTIO_F_VERSION_1, mem.clone(), vec![one(0)], irq.clone()),
        Err(DeviceError::QueueCount {
            expected: 2,
            got: 1
        })
    ));
    assert!(matches!(
        wl.activate(1 << 40, mem.clone(), vec![one(0), one(0x2000)], irq.clone()),
        Err(DeviceError::UnsupportedFeatures(_))
    ));
    let mut lazy = one(0x2000);
    lazy.set_ready(false);
    assert!(matches!(
        wl.activate(
            VIRTIO_F_VERSION_1,
            mem.clone(),
            vec![one(0), lazy],
            irq.clone()
        ),
        Err(DeviceError::InvalidQueue { index: 1 })
    ));
    wl.activate(
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX,
        mem.clone(),
        vec![one(0), one(0x2000)],
        irq.clone(),
    )
    .unwrap();
    assert!(matches!(
        wl.activate(VIRTIO_F_VERSION_1, mem, vec![], irq),
        Err(DeviceError::AlreadyActive)
    ));
    assert_eq!(wl.reset().map(|q| q.len()), Some(2));
    assert!(wl.reset().is_none());
}

#[test]
fn new_allocates_sealed_mapped_memory() {
    let mut rig = Rig::new();
    let resp = rig.alloc(5, 5000);
    assert_eq!(code(&resp), RESP_VFD_NEW);
    // Rounded up to pages; with USE_SHMEM the pfn is a page number in the region.
    assert_eq!(vfd_new_fields(&resp), (5, 0, 0, 8192));
    let resp = rig.alloc(6, 4096);
    assert_eq!(vfd_new_fields(&resp), (6, 0, 2, 4096));
    let maps = rig.services.0.lock().unwrap().maps.clone();
    assert_eq!(
        maps.into_iter().collect::<Vec<_>>(),
        vec![(0, (8192, true)), (8192, (4096, true))]
    );
    assert!(rig.irqs.0.load(Ordering::SeqCst) >= 2);

    // The memfd the compositor gets is the one mapped: sealed, of that size.
    let peer = rig.open_ctx(1);
    assert_eq!(code(&rig.command(&send_cmd(1, &[5], b"pool"))), RESP_OK);
    let (data, fds) = peer_recv(&peer, 4);
    assert_eq!(data, b"pool");
    assert_eq!(fds.len(), 1);
    let seals = rustix::fs::fcntl_get_seals(&fds[0]).unwrap();
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    assert_eq!(rustix::fs::fstat(&fds[0]).unwrap().st_size, 8192);

    assert_eq!(code(&rig.command(&cmd(CMD_VFD_CLOSE, &[5]))), RESP_OK);
    assert_eq!(rig.services.0.lock().unwrap().maps.len(), 1);
    // The freed range is handed out again.
    assert_eq!(vfd_new_fields(&rig.alloc(7, 4096)).2, 0);
}

#[test]
fn pfns_without_use_shmem_are_guest_physical() {
    let mut rig = Rig::with_features(VIRTIO_F_VERSION_1);
    let resp = rig.command(&vfd_new_cmd(CMD_VFD_NEW, 3, VFD_WRITE | VFD_MAP, 4096));
    assert_eq!(
        vfd_new_fields(&resp),
        (3, VFD_WRITE | VFD_MAP, REGION.base >> 12, 4096)
    );
    // Old flag semantics: a context is CONTROL, and a new vfd may carry WRITE|MAP.
    let resp = rig.command(&vfd_new_cmd(CMD_VFD_NEW_CTX, 1, 0, 0));
    assert_eq!(vfd_new_fields(&resp), (1, VFD_CONTROL, 0, 0));
}

#[test]
fn contexts_and_pipes_answer_their_flags() {
    let mut rig = Rig::new();
    let resp = rig.command(&vfd_new_cmd(CMD_VFD_NEW_CTX, 1, VFD_READ | VFD_WRITE, 0));
    // No memory: the pfn is the region's length in pages, the "none" value with USE_SHMEM.
    assert_eq!(
        vfd_new_fields(&resp),
        (1, VFD_READ | VFD_WRITE, REGION.len >> 12, 0)
    );
    let resp = rig.command(&vfd_new_cmd(CMD_VFD_NEW_PIPE, 2, VFD_READ, 0));
    assert_eq!(vfd_new_fields(&resp), (2, VFD_READ, REGION.len >> 12, 0));
    let resp = rig.command(&vfd_new_cmd(CMD_VFD_NEW_PIPE, 3, VFD_WRITE, 0));
    assert_eq!(vfd_new_fields(&resp).1, VFD_WRITE);
    // The named form, with the default (empty) name, is a context too.
    let mut named = vfd_new_cmd(CMD_VFD_NEW_CTX_NAMED, 4, 0, 0);
    assert_eq!(code(&rig.command(&named)), RESP_VFD_NEW);
    named[8..12].copy_from_slice(&5u32.to_le_bytes());
    named[28..37].copy_from_slice(b"wayland-1");
    assert_eq!(code(&rig.command(&named)), RESP_ERR);
    assert_eq!(rig.services.0.lock().unwrap().peers.len(), 2);
}

#[test]
fn refusals_carry_their_codes() {
    let mut rig = Rig::new();
    rig.alloc(5, 4096);
    let cases: Vec<(Vec<u8>, u32)> = vec![
        (vec![1, 0, 0], RESP_ERR),
        (cmd(0x4242, &[1]), RESP_INVALID_CMD),
        (vfd_new_cmd(CMD_VFD_NEW_DMABUF, 9, 0, 0), RESP_INVALID_CMD),
        (cmd(CMD_VFD_DMABUF_SYNC, &[5, 0]), RESP_INVALID_CMD),
        (cmd(CMD_VFD_SEND_FOREIGN_ID, &[5, 0]), RESP_INVALID_CMD),
        (vfd_new_cmd(CMD_VFD_NEW, 5, 0, 4096), RESP_INVALID_ID),
        (
            vfd_new_cmd(CMD_VFD_NEW, 0x4000_0001, 0, 4096),
            RESP_INVALID_ID,
        ),
        (vfd_new_cmd(CMD_VFD_NEW, 0, 0, 4096), RESP_INVALID_ID),
        (
            vfd_new_cmd(CMD_VFD_NEW, 6, VFD_WRITE, 4096),
            RESP_INVALID_FLAGS,
        ),
        (vfd_new_cmd(CMD_VFD_NEW, 6, 0, 0), RESP_ERR),
        (vfd_new_cmd(CMD_VFD_NEW, 6, 0, u32::MAX), RESP_OUT_OF_MEMORY),
        (cmd(CMD_VFD_NEW, &[6, 0]), RESP_ERR),
        (cmd(CMD_VFD_CLOSE, &[77]), RESP_INVALID_ID),
        (cmd(CMD_VFD_CLOSE, &[0x8000_0001]), RESP_INVALID_ID),
        (send_cmd(77, &[], b"x"), RESP_INVALID_ID),
        (send_cmd(5, &[], b"x"), RESP_INVALID_TYPE),
        (cmd(CMD_VFD_SEND, &[5, 29]), RESP_INVALID_ID),
        (cmd(CMD_VFD_SEND, &[5, 2, 5]), RESP_ERR),
        (
            vfd_new_cmd(CMD_VFD_NEW_PIPE, 8, VFD_READ | VFD_WRITE, 0),
            RESP_INVALID_FLAGS,
        ),
        (vfd_new_cmd(CMD_VFD_NEW_PIPE, 8, 0, 0), RESP_INVALID_FLAGS),
        (
            vfd_new_cmd(CMD_VFD_NEW_PIPE, 0x4000_0000, VFD_READ, 0),
            RESP_INVALID_ID,
        ),
        (vfd_new_cmd(CMD_VFD_NEW_CTX, 5, 0, 0), RESP_INVALID_ID),
    ];
    let n = cases.len() as u64;
    for (command, want) in cases {
        let resp = rig.command_with(&command, 8);
        assert_eq!(code(&resp), want, "{command:x?}");
    }
    let stats = rig.wl.stats();
    assert_eq!(stats.queues[1].errors, n);
    assert_eq!(stats.queues[1].requests, n + 1);
}

#[test]
fn sends_to_pipes_and_across_contexts() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    // A pipe the guest writes: the compositor gets the read end.
    rig.command(&vfd_new_cmd(CMD_VFD_NEW_PIPE, 2, VFD_WRITE, 0));
    assert_eq!(code(&rig.command(&send_cmd(1, &[2], b"take"))), RESP_OK);
    let (_, mut fds) = peer_recv(&peer, 4);
    let read_end = fds.pop().unwrap();
    // The device dropped its copy of that end: sending it again is refused.
    assert_eq!(
        code(&rig.command(&send_cmd(1, &[2], b"again"))),
        RESP_INVALID_TYPE
    );
    assert_eq!(code(&rig.command(&send_cmd(2, &[], b"piped "))), RESP_OK);
    assert_eq!(code(&rig.command(&send_cmd(2, &[], b"bytes"))), RESP_OK);
    // Pipes carry no fds.
    assert_eq!(
        code(&rig.command(&send_cmd(2, &[1], b"x"))),
        RESP_INVALID_TYPE
    );
    assert_eq!(code(&rig.command(&cmd(CMD_VFD_CLOSE, &[2]))), RESP_OK);
    assert_eq!(read_to_end(read_end), b"piped bytes");
    // A pipe the guest reads cannot be written by it.
    rig.command(&vfd_new_cmd(CMD_VFD_NEW_PIPE, 3, VFD_READ, 0));
    assert_eq!(
        code(&rig.command(&send_cmd(3, &[], b"x"))),
        RESP_INVALID_TYPE
    );
    // Empty sends succeed; fds without a byte cannot travel on a stream.
    assert_eq!(code(&rig.command(&send_cmd(1, &[], b""))), RESP_OK);
    assert_eq!(
        code(&rig.command(&send_cmd(1, &[3], b""))),
        RESP_INVALID_TYPE
    );
    assert_eq!(rig.wl.stats().queues[1].bytes, 4 + 11);
}

#[test]
fn service_refusals_reach_the_guest() {
    let mut rig = Rig::new();
    rig.services.0.lock().unwrap().refuse_connect = Some(ServiceRefusal::LimitReached);
    assert_eq!(
        code(&rig.command(&vfd_new_cmd(CMD_VFD_NEW_CTX, 1, 0, 0))),
        RESP_OUT_OF_MEMORY
    );
    rig.services.0.lock().unwrap().refuse_connect =
        Some(ServiceRefusal::ConnectFailed { errno: 111 });
    assert_eq!(
        code(&rig.command(&vfd_new_cmd(CMD_VFD_NEW_CTX, 1, 0, 0))),
        RESP_ERR
    );
    rig.services.0.lock().unwrap().refuse_map = Some(ServiceRefusal::LimitReached);
    assert_eq!(code(&rig.alloc(2, 4096)), RESP_OUT_OF_MEMORY);
    rig.services.0.lock().unwrap().refuse_map = None;
    // Nothing was kept from the refused attempts: the same ids and offsets work now.
    assert_eq!(vfd_new_fields(&rig.alloc(2, 4096)).2, 0);
    assert_eq!(rig.wl.vfd_count(), 1);
}

#[test]
fn malformed_chains_complete_empty() {
    let mut rig = Rig::new();
    // Response buffer first, command after: refused without running the command.
    let cmd_bytes = vfd_new_cmd(CMD_VFD_NEW, 4, 0, 4096);
    rig.mem
        .write_slice(&cmd_bytes, GuestAddress(0x30_0000))
        .unwrap();
    let head = rig.outq.push(&[
        (0x30_1000, 64, true),
        (0x30_0000, cmd_bytes.len() as u32, false),
    ]);
    rig.wl.process_queue(1, &mut rig.lp).unwrap();
    assert_eq!(rig.response(head, 64), Some(vec![]));
    // A buffer outside guest memory.
    let head = rig
        .outq
        .push(&[(MEM_SIZE as u64 - 8, 64, false), (0x30_1000, 8, true)]);
    rig.wl.process_queue(1, &mut rig.lp).unwrap();
    assert_eq!(rig.response(head, 8), Some(vec![]));
    // A command longer than the device copies in.
    let mut huge = send_cmd(1, &[], &[]);
    huge.resize(crate::wl::MAX_COMMAND_BYTES + 1, 0);
    let resp = rig.command_with(&huge, 8);
    assert!(resp.is_empty());
    assert_eq!(rig.wl.vfd_count(), 0);
    assert_eq!(rig.wl.stats().queues[1].errors, 3);
    // The device keeps serving.
    assert_eq!(code(&rig.alloc(4, 4096)), RESP_VFD_NEW);
}

#[test]
fn unknown_queue_is_an_error_and_inactive_device_ignores_work() {
    let mut wl = Wl::new(REGION, Box::new(FakeServices::default()));
    let mut lp = Loop::new();
    assert!(wl.process_queue(0, &mut lp).is_ok());
    assert!(wl.process_event(7, EventSet::IN, &mut lp).is_ok());
    assert!(matches!(
        wl.process_queue(2, &mut lp),
        Err(DeviceError::UnknownQueue(2))
    ));
    assert_eq!(wl.vfd_count(), 0);
    assert!(wl.stats().queues.is_empty());
}
