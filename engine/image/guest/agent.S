# capsa-agent: the guest's resident helper that gives a VM restored from a snapshot its own
# identity without a single fork or exec (under software emulation the first exec after a
# restore costs ~100 ms of fresh code translation; this loop is already running).
#
# It creates two FIFOs, /run/capsa-agent (requests) and /run/capsa-agent-done (replies), and
# serves one request per line:   EPOCH MAC SEED\n
#   EPOCH  the host's time in decimal seconds        -> clock_settime(CLOCK_REALTIME)
#   MAC    xx:xx:xx:xx:xx:xx (lower-case hex), or "-" -> SIOCSIFHWADDR on eth0
#   SEED   host entropy in hex; the whole line is written to /dev/urandom, then the
#          RNDRESEEDCRNG ioctl rekeys the kernel's generator at once (writing alone would
#          leave clones drawing identical bytes until the next periodic reseed).
# Reply: one status character and a newline: 0 (done), R (reseed refused), T (time refused),
# M (MAC refused); the last failure wins. The engine validates what it sends.
#
# Built with: as --64 -o agent.o agent.S && ld -N -s -static -e _start -o capsa-agent agent.o
# (engine/clone_agent.py holds the result; tests/test_snapshot_unit.py rebuilds and compares).

        .intel_syntax noprefix
        .globl _start
        .text
_start:
        # mknod(path, S_IFIFO | 0600, 0) for both FIFOs; EEXIST is fine.
        mov eax, 133
        lea rdi, [rip + request_path]
        mov esi, 0x1180
        xor edx, edx
        syscall
        mov eax, 133
        lea rdi, [rip + reply_path]
        mov esi, 0x1180
        xor edx, edx
        syscall
        # Both opened O_RDWR: the opens never block, and a FIFO always has a reader and a
        # writer, so the shell's redirections into and out of them never block either.
        mov eax, 2
        lea rdi, [rip + request_path]
        mov esi, 2
        xor edx, edx
        syscall
        test eax, eax
        js die
        mov r12d, eax
        mov eax, 2
        lea rdi, [rip + reply_path]
        mov esi, 2
        xor edx, edx
        syscall
        test eax, eax
        js die
        mov r13d, eax
        mov eax, 2
        lea rdi, [rip + urandom_path]
        mov esi, 1
        xor edx, edx
        syscall
        test eax, eax
        js die
        mov r14d, eax
        # socket(AF_INET, SOCK_DGRAM, 0): a handle for the NIC's ioctl.
        mov eax, 41
        mov edi, 2
        mov esi, 2
        xor edx, edx
        syscall
        mov r15d, eax

next:
        xor eax, eax
        mov edi, r12d
        lea rsi, [rip + buf]
        mov edx, 511
        syscall
        test eax, eax
        jle next
        mov ebx, eax
        mov byte ptr [rip + status], '0'

        # Entropy: the whole request into the input pool, then reseed.
        mov eax, 1
        mov edi, r14d
        lea rsi, [rip + buf]
        mov edx, ebx
        syscall
        mov eax, 16
        mov edi, r14d
        mov esi, 0x5207
        xor edx, edx
        syscall
        test eax, eax
        jz parse_time
        mov byte ptr [rip + status], 'R'

parse_time:
        lea rbp, [rip + buf]
        xor eax, eax
1:      movzx ecx, byte ptr [rbp]
        sub ecx, '0'
        cmp ecx, 9
        ja 2f
        imul rax, rax, 10
        add rax, rcx
        inc rbp
        jmp 1b
2:      mov [rip + ts_sec], rax
        mov eax, 227
        xor edi, edi
        lea rsi, [rip + ts_sec]
        syscall
        test eax, eax
        jz parse_mac
        mov byte ptr [rip + status], 'T'

parse_mac:
        lea rsi, [rbp + 1]
        cmp byte ptr [rsi], '-'
        je reply
        lea rdi, [rip + ifr_mac]
        mov r8d, 6
3:      call hex_byte
        stosb
        inc rsi                       # the ':' after each pair
        dec r8d
        jnz 3b
        mov eax, 16
        mov edi, r15d
        mov esi, 0x8924
        lea rdx, [rip + ifr]
        syscall
        test eax, eax
        jz reply
        mov byte ptr [rip + status], 'M'

reply:
        mov eax, 1
        mov edi, r13d
        lea rsi, [rip + status]
        mov edx, 2
        syscall
        jmp next

die:
        mov edi, 1
        mov eax, 60
        syscall

# hex_byte: al = the byte the two hex digits at [rsi] spell; rsi += 2 (edx is clobbered).
hex_byte:
        call hex_digit
        shl eax, 4
        mov edx, eax
        call hex_digit
        or eax, edx
        ret

hex_digit:
        movzx eax, byte ptr [rsi]
        inc rsi
        sub eax, '0'
        cmp eax, 9
        jbe 4f
        sub eax, 'a' - '0' - 10
        cmp eax, 15
        jbe 4f
        xor eax, eax
4:      ret

        .data
request_path:   .asciz "/run/capsa-agent"
reply_path:     .asciz "/run/capsa-agent-done"
urandom_path:   .asciz "/dev/urandom"
status:         .ascii "0\n"
        .balign 8
ts_sec:         .quad 0
ts_nsec:        .quad 0
# struct ifreq: the interface name (16 bytes), then struct sockaddr (family ARPHRD_ETHER).
ifr:            .ascii "eth0"
                .zero 12
                .short 1
ifr_mac:        .zero 14
                .zero 8

        .bss
buf:            .zero 512
