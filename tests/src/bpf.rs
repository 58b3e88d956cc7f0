//! The smallest possible use of the bpf(2) syscall, to prove a machine can run BPF at all
//! before the tracker (libbpf-rs) is blamed for anything.
//!
//! Only the fields of `union bpf_attr` each command reads are declared; the kernel accepts a
//! shorter attr (it zero-extends, and we pass our struct's size). Layouts follow
//! `include/uapi/linux/bpf.h`.

use std::os::fd::{FromRawFd, OwnedFd};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

/// One eBPF instruction (`struct bpf_insn`): opcode, dst/src registers, offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    /// `r0 = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
    pub const fn mov_r0(imm: i32) -> Self {
        Self {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm,
        }
    }
    /// `exit` (BPF_JMP | BPF_EXIT).
    pub const fn exit() -> Self {
        Self {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        }
    }
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    let size = libc::c_long::try_from(size_of::<T>()).expect("attr size fits c_long");
    // SAFETY: attr points to a live, initialised #[repr(C)] prefix of union bpf_attr of
    // `size` bytes, which the kernel reads (and for some commands writes) only within `size`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fd_from(rc: libc::c_long) -> OwnedFd {
    let fd = i32::try_from(rc).expect("bpf returned an fd that fits i32");
    // SAFETY: a non-negative return of BPF_MAP_CREATE/BPF_PROG_LOAD is a new fd we now own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn raw(fd: &OwnedFd) -> u32 {
    use std::os::fd::AsRawFd;
    u32::try_from(fd.as_raw_fd()).expect("fds are non-negative")
}

/// Creates an array map of `max_entries` `u64` values keyed by `u32`.
pub fn create_array_map(max_entries: u32) -> std::io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_CREATE, &mut attr).map(fd_from)
}

/// Stores `value` at `key` in an array map made by [`create_array_map`].
pub fn map_update(map: &OwnedFd, key: u32, value: u64) -> std::io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: raw(map),
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_ref(&value) as u64,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Reads the value at `key` of an array map made by [`create_array_map`].
pub fn map_lookup(map: &OwnedFd, key: u32) -> std::io::Result<u64> {
    let mut value = 0u64;
    let mut attr = MapElemAttr {
        map_fd: raw(map),
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}

/// Loads a socket-filter program through the verifier. On failure the error carries the
/// verifier log.
pub fn load_socket_filter(insns: &[Insn]) -> anyhow::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: u32::try_from(insns.len())?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: u32::try_from(log.len())?,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_LOAD, &mut attr).map(fd_from).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        anyhow::anyhow!(
            "BPF_PROG_LOAD: {e}; verifier log:\n{}",
            String::from_utf8_lossy(&log[..end])
        )
    })
}

/// Runs a loaded socket-filter program once over `packet` (BPF_PROG_TEST_RUN) and returns
/// the program's return value.
pub fn test_run(prog: &OwnedFd, packet: &[u8]) -> std::io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: raw(prog),
        data_size_in: u32::try_from(packet.len()).expect("test packet fits u32"),
        data_in: packet.as_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

/// Probe for [`Need::Bpf`](crate::tier::Need::Bpf): can we create a one-entry map?
pub fn probe() -> Result<(), String> {
    create_array_map(1)
        .map(drop)
        .map_err(|e| format!("bpf(BPF_MAP_CREATE) failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_uapi_offsets() {
        assert_eq!(size_of::<MapCreateAttr>(), 20);
        assert_eq!(size_of::<MapElemAttr>(), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_flags), 44);
        assert_eq!(std::mem::offset_of!(TestRunAttr, data_in), 16);
        assert_eq!(std::mem::offset_of!(TestRunAttr, repeat), 32);
        assert_eq!(size_of::<Insn>(), 8);
    }
}
