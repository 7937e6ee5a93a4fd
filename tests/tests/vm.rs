//! A QEMU virtual machine uses an LV as its disk: `qemu-system-x86_64`
//! (TCG) boots from the export over virtio-blk, and the guest reads and
//! writes the disk through it.
//!
//! The guest is a boot sector: SeaBIOS loads it from the LV, it reads disk
//! sector 1 (BIOS int 13h, through QEMU's NBD client), writes it to sector
//! 2, and reports through QEMU's isa-debug-exit port. The test then checks
//! sector 2 over NBD.

use std::process::Command;
use std::time::Duration;

use tests::{random_bytes, run_with_limit, Server};

/// The boot sector's code (16-bit real mode, loaded at 0x7c00).
const BOOT_CODE: &[u8] = &[
    0xFA, // cli
    0x31, 0xC0, // xor ax, ax
    0x8E, 0xD8, // mov ds, ax
    0x8E, 0xC0, // mov es, ax
    0x8E, 0xD0, // mov ss, ax
    0xBC, 0x00, 0x7C, // mov sp, 0x7c00
    0xFB, // sti
    0xB8, 0x01, 0x02, // mov ax, 0x0201      ; read 1 sector
    0xB9, 0x02, 0x00, // mov cx, 0x0002      ; cylinder 0, sector 2 (LBA 1)
    0x30, 0xF6, // xor dh, dh            ; head 0; dl = boot drive
    0xBB, 0x00, 0x80, // mov bx, 0x8000      ; into es:bx
    0xCD, 0x13, // int 0x13
    0x72, 0x17, // jc fail
    0xB8, 0x01, 0x03, // mov ax, 0x0301      ; write 1 sector
    0xB9, 0x03, 0x00, // mov cx, 0x0003      ; sector 3 (LBA 2)
    0x30, 0xF6, // xor dh, dh
    0xBB, 0x00, 0x80, // mov bx, 0x8000
    0xCD, 0x13, // int 0x13
    0x72, 0x08, // jc fail
    0xB0, 0x10, // mov al, 0x10
    0xE6, 0xF4, // out 0xf4, al          ; QEMU exits with (0x10 << 1) | 1 = 33
    0xFA, // halt: cli                   ; the exit is a request: stop here
    0xF4, // hlt
    0xEB, 0xFC, // jmp halt
    0xB0, 0x01, // fail: mov al, 0x01
    0xE6, 0xF4, // out 0xf4, al          ; QEMU exits with 3
    0xEB, 0xF6, // jmp halt
];

fn boot_sector() -> Vec<u8> {
    let mut sector = vec![0u8; 512];
    sector[..BOOT_CODE.len()].copy_from_slice(BOOT_CODE);
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector
}

#[test]
fn a_qemu_vm_boots_from_and_writes_to_an_lv() {
    let server = Server::start();
    server.make_vg("vg", 1, "64m");
    server.bv_ok(&["lvcreate", "-V", "32m", "-n", "boot", "vg"]);
    let uri = server.uri("vg/boot");

    // Disk image: boot sector, then one sector of data for the guest to copy.
    let mut image = boot_sector();
    image.extend(random_bytes(512, 99));
    image.resize(4096, 0);
    let image_path = server.path("head.img");
    std::fs::write(&image_path, &image).unwrap();
    let output = run_with_limit(
        Command::new("nbdcopy")
            .args([image_path.to_str().unwrap(), &uri, "--flush"])
            .arg("--destination-is-zero"),
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = run_with_limit(
        Command::new("qemu-system-x86_64").args([
            "-machine",
            "pc,accel=tcg",
            "-m",
            "32",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-drive",
            &format!("file={uri},format=raw,if=virtio,cache=none"),
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-boot",
            "c",
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(
        output.status.code(),
        Some(33),
        "the guest did not report success\nstderr: {}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log_text()
    );

    let copy = server.path("copy.img");
    let output = run_with_limit(
        Command::new("qemu-img").args([
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            copy.to_str().unwrap(),
        ]),
        Duration::from_secs(60),
    );
    assert!(output.status.success());
    let disk = std::fs::read(&copy).unwrap();
    assert_eq!(&disk[..512], &boot_sector()[..], "boot sector intact");
    assert_eq!(
        &disk[1024..1536],
        &image[512..1024],
        "the guest copied sector 1 to sector 2"
    );
}
