//! Root tier: proves the host kernel gives us what the tracker and transport tests rely on —
//! loop devices with O_DIRECT, BPF, network namespaces with veth. Runs on the host as root
//! (`cargo test --workspace` under `scripts/test-all.sh`); skips with the reason otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use sitrep_tests::io::{AlignedBuf, MIB, assert_same, direct_read, direct_round_trip};
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::netns::NetNsPair;
use sitrep_tests::{Need, bpf, require};

#[test]
fn loop_device_round_trips_o_direct_writes() {
    if !require!(Need::Root, Need::LoopDevices, Need::Command("losetup")) {
        return;
    }
    let dev = LoopDevice::new(
        16 * MIB,
        LoopOptions {
            direct_io: true,
            ..Default::default()
        },
    )
    .expect("attach loop device");
    // Three writes: the first block, one in the middle at an odd 4 KiB offset, the last MiB.
    for (seed, offset, len) in [
        (1, 0, 64 * 1024),
        (2, 5 * MIB + 12 * 1024, 128 * 1024),
        (3, 15 * MIB, MIB),
    ] {
        let len = usize::try_from(len).unwrap();
        direct_round_trip(
            dev.path(),
            offset,
            &AlignedBuf::with_pattern(len, seed, offset),
        );
    }
    // Unwritten space between the writes reads back as zeros (the backing file is sparse).
    let gap = direct_read(dev.path(), MIB, 64 * 1024);
    assert_same(
        &vec![0; gap.len()],
        &gap,
        "unwritten region of the loop device",
    );
    // And the backing file holds exactly what went through the device.
    let backing = std::fs::read(dev.backing()).unwrap();
    let expected = AlignedBuf::with_pattern(1024 * 1024, 3, 15 * MIB);
    assert_same(
        &expected,
        &backing[15 * 1024 * 1024..],
        "backing file behind the loop device",
    );
}

#[test]
fn network_namespaces_joined_by_veth_carry_tcp() {
    if !require!(Need::Root, Need::Netns) {
        return;
    }
    let pair = NetNsPair::new().expect("create two namespaces with a veth pair");
    let listener: TcpListener = pair
        .b
        .run_in(|| TcpListener::bind((NetNsPair::ADDR_B, 0)))
        .unwrap()
        .expect("bind in namespace b");
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).expect("server read");
        conn.write_all(&buf[..n]).expect("server echo");
        peer
    });
    let msg = b"sitrep over veth";
    let echoed = pair
        .a
        .run_in(|| {
            let addr = SocketAddr::from((NetNsPair::ADDR_B, port));
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(msg)?;
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back)?;
            std::io::Result::Ok(back)
        })
        .unwrap()
        .expect("connect from namespace a and read the echo");
    assert_eq!(echoed, msg);
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip(),
        NetNsPair::ADDR_A,
        "the connection came from a's veth address"
    );
    // The host namespace does not know the test subnet: traffic stayed inside the pair.
    let host_addrs = sitrep_tests::cmd::run("ip", &["-4", "addr", "show"]);
    assert!(
        !host_addrs.contains("10.99.0."),
        "test addresses leaked into the host: {host_addrs}"
    );
}

#[test]
fn bpf_syscall_creates_maps_and_runs_programs() {
    if !require!(Need::Root, Need::Bpf) {
        return;
    }
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("read /sys/kernel/btf/vmlinux");
    assert_eq!(
        btf.get(..2),
        Some(&[0x9f, 0xeb][..]),
        "BTF magic 0xeb9f (little-endian)"
    );

    let map = bpf::create_array_map(4).expect("BPF_MAP_CREATE array");
    bpf::map_update(&map, 2, 0xdead_beef_cafe).expect("BPF_MAP_UPDATE_ELEM");
    assert_eq!(bpf::map_lookup(&map, 2).unwrap(), 0xdead_beef_cafe);
    assert_eq!(
        bpf::map_lookup(&map, 1).unwrap(),
        0,
        "array maps start zeroed"
    );

    let prog = bpf::load_socket_filter(&[bpf::Insn::mov_r0(42), bpf::Insn::exit()])
        .expect("verifier accepts `r0 = 42; exit`");
    let packet = [0u8; 64]; // at least an Ethernet header
    assert_eq!(
        bpf::test_run(&prog, &packet).expect("BPF_PROG_TEST_RUN"),
        42
    );
}
