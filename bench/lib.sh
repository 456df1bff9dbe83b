# shellcheck shell=bash
# Shared by the bench scripts: source it, don't run it.

# free_port prints a TCP port that no socket uses at the moment, below the
# kernel's ephemeral range, so that no client connection can take it before
# the server binds it (the herds open many connections).
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
	local p
	while :; do
		p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
		if ! ss -Htan "sport = :$p" | grep -q .; then
			echo "$p"
			return
		fi
	done
}
