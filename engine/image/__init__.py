"""The default guest image: Debian's kernel and an initramfs we build (build; apt fetches the
packages, cpio, elf, kmods and vmlinux take them apart), with the guest's scripts in ``guest/``."""
