//! Messages for the guest that wait for room in the in queue.
//!
//! What the compositor sends becomes, per receive, a `VFD_NEW` for every fd that came along
//! (each now a host vfd), then one `VFD_RECV` with their ids and the bytes; a hung-up vfd
//! becomes a `VFD_HUP`. They queue here, in order, until the guest offers in-queue buffers.
//! The device stops reading from the compositor while [`Inbox::is_full`], so the queue stays
//! bounded whatever the compositor sends.

use std::collections::VecDeque;

use super::protocol::{encode_hup, encode_recv, encode_vfd_new, CMD_VFD_NEW, CTRL_SEND_LEN};

/// Messages kept before the device stops reading from the host.
pub const INBOX_LIMIT: usize = 64;

/// One message for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InMsg {
    /// A vfd the host created.
    New {
        /// Its host id.
        id: u32,
        /// Flags for the guest.
        flags: u32,
        /// Page number (or the "none" value).
        pfn: u64,
        /// Size in bytes (shared memory) or 0.
        size: u32,
    },
    /// Bytes (and vfds, announced by the `New`s before it) for vfd `vfd`.
    Recv {
        /// The context or pipe they came from.
        vfd: u32,
        /// Host ids of the vfds that came along.
        ids: Vec<u32>,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The host end of `vfd` hung up.
    Hup {
        /// The vfd.
        vfd: u32,
    },
}

impl InMsg {
    fn encode(&self) -> Vec<u8> {
        match self {
            InMsg::New {
                id,
                flags,
                pfn,
                size,
            } => encode_vfd_new(CMD_VFD_NEW, *id, *flags, *pfn, *size),
            InMsg::Recv { vfd, ids, data } => encode_recv(*vfd, ids, data),
            InMsg::Hup { vfd } => encode_hup(*vfd),
        }
    }
}

/// The queue of messages for the guest.
#[derive(Debug, Default)]
pub struct Inbox {
    msgs: VecDeque<InMsg>,
}

impl Inbox {
    /// Appends a message.
    pub fn push(&mut self, msg: InMsg) {
        self.msgs.push_back(msg);
    }

    /// Whether the device must stop reading from the host until the guest takes messages.
    pub fn is_full(&self) -> bool {
        self.msgs.len() >= INBOX_LIMIT
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Number of waiting messages.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// The next message, encoded to fit `capacity` bytes: a `VFD_RECV` too long for it is
    /// split (the first part takes the ids, the rest stays in front). `None` if nothing waits
    /// or the next message cannot fit at all; in the latter case it stays.
    pub fn pop_fitting(&mut self, capacity: usize) -> Option<Vec<u8>> {
        let front = self.msgs.front_mut()?;
        let bytes = front.encode();
        if bytes.len() <= capacity {
            self.msgs.pop_front();
            return Some(bytes);
        }
        let InMsg::Recv { vfd, ids, data } = front else {
            return None;
        };
        let head = CTRL_SEND_LEN + 4 * ids.len();
        if capacity <= head || data.is_empty() {
            return None;
        }
        let rest = data.split_off(capacity - head);
        let first = encode_recv(*vfd, ids, data);
        ids.clear();
        *data = rest;
        Some(first)
    }

    /// Drops what waits for `vfd` (the guest closed it). Returns the host ids announced in the
    /// dropped `VFD_RECV`s: their vfds can never reach the guest and must be closed too.
    pub fn forget(&mut self, vfd: u32) -> Vec<u32> {
        let mut orphans = Vec::new();
        self.msgs.retain(|m| match m {
            InMsg::Recv { vfd: v, ids, .. } if *v == vfd => {
                orphans.extend_from_slice(ids);
                false
            }
            InMsg::Hup { vfd: v } => *v != vfd,
            InMsg::New { id, .. } => *id != vfd,
            InMsg::Recv { .. } => true,
        });
        orphans
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.msgs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_receives_are_split_and_ids_go_first() {
        let mut inbox = Inbox::default();
        inbox.push(InMsg::Recv {
            vfd: 1,
            ids: vec![0x4000_0000],
            data: (0..100u8).collect(),
        });
        assert_eq!(inbox.pop_fitting(20), None);
        let first = inbox.pop_fitting(40).unwrap();
        assert_eq!(first.len(), 40);
        assert_eq!(&first[12..16], &1u32.to_le_bytes());
        assert_eq!(first[20..], (0..20u8).collect::<Vec<_>>()[..]);
        let second = inbox.pop_fitting(4096).unwrap();
        assert_eq!(&second[12..16], &0u32.to_le_bytes());
        assert_eq!(second[16..], (20..100u8).collect::<Vec<_>>()[..]);
        assert!(inbox.is_empty());
    }

    #[test]
    fn small_messages_wait_for_room() {
        let mut inbox = Inbox::default();
        inbox.push(InMsg::Hup { vfd: 3 });
        assert_eq!(inbox.pop_fitting(11), None);
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox.pop_fitting(12).unwrap().len(), 12);
    }

    #[test]
    fn forgetting_a_vfd_returns_the_orphans() {
        let mut inbox = Inbox::default();
        let new = |id| InMsg::New {
            id,
            flags: 0,
            pfn: 0,
            size: 0,
        };
        inbox.push(new(0x4000_0000));
        inbox.push(InMsg::Recv {
            vfd: 1,
            ids: vec![0x4000_0000],
            data: vec![1],
        });
        inbox.push(InMsg::Recv {
            vfd: 2,
            ids: vec![],
            data: vec![2],
        });
        inbox.push(InMsg::Hup { vfd: 1 });
        assert_eq!(inbox.forget(1), vec![0x4000_0000]);
        assert_eq!(inbox.len(), 2);
        assert!(inbox.forget(0x4000_0000).is_empty());
        assert_eq!(inbox.len(), 1);
        for _ in 0..INBOX_LIMIT {
            inbox.push(InMsg::Hup { vfd: 9 });
        }
        assert!(inbox.is_full());
    }
}
