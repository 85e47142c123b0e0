#!/usr/bin/env bash
# peers.sh: measures other userspace VPNs (boringtun, wireguard-go, strongSwan with
# kernel-libipsec) on the same kind of namespace lab tandem's bench uses, so that a tandem
# figure can be read as a ratio against them. `lab bench` (netns-tests/src/bin/lab.rs) starts
# boringtun and wireguard-go itself when they are installed; this script installs them and
# measures the full set, strongSwan included.
#
# Install the peers once (apt packages and one cargo install), as root:
#   ./peers.sh --install
# which runs:
#   apt-get update
#   DEBIAN_FRONTEND=noninteractive apt-get install -y wireguard-tools iperf3 \
#       iputils-ping wireguard-go strongswan strongswan-swanctl \
#       libcharon-extra-plugins sysstat python3
#   cargo install boringtun-cli --version 0.7.1 --locked
#
# Run, as root:
#   ./peers.sh [--install] [-r REPS] [-t SECS] [-o OUTDIR] SETUP...
# SETUP is one or more of:
#   veth1hop      iperf3 from gw straight to vpc over one veth pair: the underlay ceiling
#   baseline      lab -> srv routed by gw and vpc with no VPN: the ceiling tandem is compared with
#   boringtun     boringtun-cli with its default 4 threads on gw and vpc
#   boringtun-t1  boringtun-cli --threads 1 (any -tN works)
#   wggo          wireguard-go from the Debian package
#   strongswan    strongSwan charon + kernel-libipsec (ESP in UDP in userspace, AES-256-GCM)
#   all           veth1hop baseline boringtun boringtun-t1 boringtun-t2 wggo strongswan
# For each: iperf3 TCP (1 stream, PAR streams, reverse), UDP at full rate (received packets per
# second is the capacity figure), ping RTT, and the CPU the VPN daemons used. Results go to
# OUTDIR (default $TMPDIR/peers-bench/<time>/); summarize.py next to this script writes
# summary.md there (medians over the repetitions).
#
# Environment:
#   TUN_MTU     VPN interface MTU, default 1440: a 1400-byte UDP payload makes a 1428-byte inner
#               packet, which fits, and outer packets stay <= 1500 bytes on the IPv4 underlay
#   UDP_LEN     iperf3 UDP payload, default 1400
#   PAR         parallel TCP streams, default 4
#   PING_COUNT  default 50
#   BT_EXTRA    extra boringtun-cli flags, e.g. --disable-multi-queue
#   SS_UDP_LEN  strongSwan's UDP payload, default 1372: libipsec fixes its TUN MTU at 1400
#               (raising it with `ip link` truncates packets), so its inner packets are 1400 bytes
#   SS_MTU      lowers (never raises) libipsec's TUN MTU
#
# Topology. Every address exists only inside the namespaces created here, and no namespace has a
# link to the host, so nothing leaves the machine; the namespaces are deleted on exit:
#   ab-lab 10.10.0.2 --veth-- 10.10.0.1 ab-gw 192.0.2.1 --veth "underlay"--
#   192.0.2.2 ab-vpc 10.20.0.1 --veth-- 10.20.0.2 ab-srv
#   VPN inner addresses: gw 10.99.0.1, vpc 10.99.0.2
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPS=3
SECS=10
OUT=""
TUN_MTU="${TUN_MTU:-1440}"
UDP_LEN="${UDP_LEN:-1400}"
PAR="${PAR:-4}"
PING_COUNT="${PING_COUNT:-50}"
P=ab-                       # namespace prefix
NS_LAB=${P}lab NS_GW=${P}gw NS_VPC=${P}vpc NS_SRV=${P}srv
LAB_IP=10.10.0.2 GW_LAN=10.10.0.1 GW_WAN=192.0.2.1 VPC_WAN=192.0.2.2
VPC_LAN=10.20.0.1 SRV_IP=10.20.0.2
LAB_NET=10.10.0.0/24 SRV_NET=10.20.0.0/24
WG_PORT=51820
BT=${BORINGTUN:-$(command -v boringtun-cli || echo $HOME/.cargo/bin/boringtun-cli)}
DAEMON_PIDS=()             # pids of VPN daemons we started (for CPU accounting + teardown)
IPERF_SRV_PIDFILE=""

do_install() {
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y wireguard-tools iperf3 \
    iputils-ping wireguard-go strongswan strongswan-swanctl \
    libcharon-extra-plugins sysstat python3
  cargo install boringtun-cli --version 0.7.1 --locked
}

log() { echo "[$(date +%T)] $*" >&2; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ------------------------------------------------------------------ topology
topo_down() {
  local pid
  for pid in "${DAEMON_PIDS[@]:-}"; do
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null
  done
  if [[ -n "$IPERF_SRV_PIDFILE" && -f "$IPERF_SRV_PIDFILE" ]]; then
    kill "$(cat "$IPERF_SRV_PIDFILE")" 2>/dev/null
  fi
  sleep 0.5
  for pid in "${DAEMON_PIDS[@]:-}"; do
    [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null
  done
  DAEMON_PIDS=()
  local ns
  for ns in $NS_LAB $NS_GW $NS_VPC $NS_SRV; do
    ip netns del "$ns" 2>/dev/null
  done
  rm -f /var/run/wireguard/abwg0.sock /var/run/wireguard/abwg1.sock
}

topo_up() {
  topo_down
  local ns
  for ns in $NS_LAB $NS_GW $NS_VPC $NS_SRV; do
    ip netns add "$ns"
    nsx "$ns" ip link set lo up
    nsx "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  done
  ip link add ab-lab0 netns $NS_LAB type veth peer name ab-gwlan netns $NS_GW
  ip link add ab-gwwan netns $NS_GW type veth peer name ab-vpcwan netns $NS_VPC
  ip link add ab-vpclan netns $NS_VPC type veth peer name ab-srv0 netns $NS_SRV
  nsx $NS_LAB ip addr add $LAB_IP/24 dev ab-lab0
  nsx $NS_GW  ip addr add $GW_LAN/24 dev ab-gwlan
  nsx $NS_GW  ip addr add $GW_WAN/24 dev ab-gwwan
  nsx $NS_VPC ip addr add $VPC_WAN/24 dev ab-vpcwan
  nsx $NS_VPC ip addr add $VPC_LAN/24 dev ab-vpclan
  nsx $NS_SRV ip addr add $SRV_IP/24 dev ab-srv0
  nsx $NS_LAB ip link set ab-lab0 up
  nsx $NS_GW  ip link set ab-gwlan up
  nsx $NS_GW  ip link set ab-gwwan up
  nsx $NS_VPC ip link set ab-vpcwan up
  nsx $NS_VPC ip link set ab-vpclan up
  nsx $NS_SRV ip link set ab-srv0 up
  nsx $NS_GW  sysctl -qw net.ipv4.ip_forward=1
  nsx $NS_VPC sysctl -qw net.ipv4.ip_forward=1
  # hosts only know the remote site via their gateway; no default routes anywhere
  nsx $NS_LAB ip route add $SRV_NET via $GW_LAN
  nsx $NS_SRV ip route add $LAB_NET via $VPC_LAN
}

routes_plain() {
  nsx $NS_GW  ip route add $SRV_NET via $VPC_WAN
  nsx $NS_VPC ip route add $LAB_NET via $GW_WAN
}

start_iperf_server() { # ns
  IPERF_SRV_PIDFILE="$WORK/iperf3-$1.pid"
  nsx "$1" iperf3 -s -D -I "$IPERF_SRV_PIDFILE" --logfile "$WORK/iperf3-server-$1.log"
  sleep 0.5
}

# ------------------------------------------------------------------ WireGuard (userspace)
wg_keys() {
  umask 077
  wg genkey > "$WORK/gw.key";  wg pubkey < "$WORK/gw.key"  > "$WORK/gw.pub"
  wg genkey > "$WORK/vpc.key"; wg pubkey < "$WORK/vpc.key" > "$WORK/vpc.pub"
}

wait_sock() { local i; for i in $(seq 1 100); do [[ -S "$1" ]] && return 0; sleep 0.1; done; log "no UAPI socket $1"; return 1; }

wg_configure() { # after daemons created abwg0 (gw) and abwg1 (vpc)
  wait_sock /var/run/wireguard/abwg0.sock || return 1
  wait_sock /var/run/wireguard/abwg1.sock || return 1
  nsx $NS_GW wg set abwg0 private-key "$WORK/gw.key" listen-port $WG_PORT \
      peer "$(cat "$WORK/vpc.pub")" allowed-ips 10.99.0.2/32,$SRV_NET endpoint $VPC_WAN:$WG_PORT
  nsx $NS_VPC wg set abwg1 private-key "$WORK/vpc.key" listen-port $WG_PORT \
      peer "$(cat "$WORK/gw.pub")" allowed-ips 10.99.0.1/32,$LAB_NET endpoint $GW_WAN:$WG_PORT
  nsx $NS_GW  ip addr add 10.99.0.1/30 dev abwg0
  nsx $NS_VPC ip addr add 10.99.0.2/30 dev abwg1
  nsx $NS_GW  ip link set abwg0 mtu $TUN_MTU up
  nsx $NS_VPC ip link set abwg1 mtu $TUN_MTU up
  nsx $NS_GW  ip route add $SRV_NET dev abwg0
  nsx $NS_VPC ip route add $LAB_NET dev abwg1
}

start_boringtun() { # threads
  local th=$1
  wg_keys
  WG_SUDO=1 ip netns exec $NS_GW  "$BT" -f --disable-drop-privileges -t "$th" ${BT_EXTRA:-} -v error -l "$WORK/bt-gw.log"  abwg0 >"$WORK/bt-gw.out" 2>&1 &
  DAEMON_PIDS+=($!)
  WG_SUDO=1 ip netns exec $NS_VPC "$BT" -f --disable-drop-privileges -t "$th" ${BT_EXTRA:-} -v error -l "$WORK/bt-vpc.log" abwg1 >"$WORK/bt-vpc.out" 2>&1 &
  DAEMON_PIDS+=($!)
  wg_configure
}

start_wggo() {
  wg_keys
  LOG_LEVEL=error WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec $NS_GW  wireguard-go -f abwg0 >"$WORK/wggo-gw.out" 2>&1 &
  DAEMON_PIDS+=($!)
  LOG_LEVEL=error WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec $NS_VPC wireguard-go -f abwg1 >"$WORK/wggo-vpc.out" 2>&1 &
  DAEMON_PIDS+=($!)
  wg_configure
}

# ------------------------------------------------------------------ strongSwan + kernel-libipsec
ss_conf() { # side local_addr remote_addr local_ts remote_ts
  local side=$1 la=$2 ra=$3 lts=$4 rts=$5 d="$WORK/ss-$1"
  mkdir -p "$d"
  cat > "$d/strongswan.conf" <<EOF
charon {
  load = random nonce openssl kdf pem pkcs1 pubkey x509 kernel-libipsec kernel-netlink socket-default vici
  threads = 16
  install_routes = yes
  filelog {
    ss { path = $d/charon.log
         default = 1
         ike = 1
         knl = 1
         esp = 1
         time_format = %T }
  }
  plugins {
    vici { socket = unix://$d/charon.vici }
  }
}
swanctl { socket = unix://$d/charon.vici
          load = random openssl pem pkcs1 pubkey x509 }
EOF
  cat > "$d/swanctl.conf" <<EOF
connections {
  ab {
    version = 2
    local_addrs = $la
    remote_addrs = $ra
    proposals = aes256gcm16-prfsha256-x25519
    encap = yes
    local { auth = psk
            id = $la }
    remote { auth = psk
             id = $ra }
    children {
      net {
        mode = tunnel
        local_ts = $lts
        remote_ts = $rts
        esp_proposals = aes256gcm16
        start_action = trap
      }
    }
  }
}
secrets {
  ike-ab { id-a = $la
           id-b = $ra
           secret = "peers-bench-not-a-secret-0123456789" }
}
EOF
}

start_strongswan() {
  ss_conf gw  $GW_WAN  $VPC_WAN $LAB_NET $SRV_NET
  ss_conf vpc $VPC_WAN $GW_WAN  $SRV_NET $LAB_NET
  local side ns
  for side in gw vpc; do
    ns=$NS_GW; [[ $side == vpc ]] && ns=$NS_VPC
    # charon's pidfile is hard-coded to /var/run/charon.pid: give each instance
    # its own private /run via a fresh mount namespace.
    STRONGSWAN_CONF="$WORK/ss-$side/strongswan.conf" ip netns exec $ns unshare -m --propagation private \
      sh -c 'mount -t tmpfs ab-run /run && exec /usr/lib/ipsec/charon' >"$WORK/ss-$side/charon.out" 2>&1 &
    DAEMON_PIDS+=($!)
  done
  local i
  for side in gw vpc; do
    for i in $(seq 1 50); do [[ -S "$WORK/ss-$side/charon.vici" ]] && break; sleep 0.2; done
    STRONGSWAN_CONF="$WORK/ss-$side/strongswan.conf" swanctl --load-all --file "$WORK/ss-$side/swanctl.conf" \
      --uri "unix://$WORK/ss-$side/charon.vici" >>"$WORK/ss-$side/swanctl.out" 2>&1 || { log "swanctl load failed ($side)"; return 1; }
  done
  # route traffic to the remote site into the libipsec TUN device (charon also
  # installs a table-220 route once the CHILD_SA is up)
  for i in $(seq 1 50); do nsx $NS_GW ip link show ipsec0 >/dev/null 2>&1 && nsx $NS_VPC ip link show ipsec0 >/dev/null 2>&1 && break; sleep 0.2; done
  if [[ -n "${SS_MTU:-}" ]]; then
    nsx $NS_GW  ip link set ipsec0 mtu $SS_MTU
    nsx $NS_VPC ip link set ipsec0 mtu $SS_MTU
  fi
  STRONGSWAN_CONF="$WORK/ss-gw/strongswan.conf" swanctl --initiate --child net --uri "unix://$WORK/ss-gw/charon.vici" \
      >>"$WORK/ss-gw/swanctl.out" 2>&1 || log "swanctl initiate reported failure"
  # pids of the real charon processes (the sh got exec'ed, so $! is charon)
}

# ------------------------------------------------------------------ measurement helpers
proc_ticks() { # sum utime+stime over DAEMON_PIDS and their threads
  local t=0 pid
  for pid in "${DAEMON_PIDS[@]:-}"; do
    [[ -n "$pid" && -r /proc/$pid/stat ]] || continue
    # include children (ip netns exec execs, so pid is the daemon itself)
    t=$(( t + $(awk '{print $14+$15}' /proc/$pid/stat) ))
  done
  echo $t
}
sys_ticks() { awk '/^cpu /{print $2+$3+$4+$6+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9, $7+$8}' /proc/stat; } # busy total softirq

measure() { # name outfile cmd...  -> runs cmd, writes cpu json side file
  local name=$1 out=$2; shift 2
  local p0 p1 s0 s1 hz; hz=$(getconf CLK_TCK)
  p0=$(proc_ticks); s0=$(sys_ticks)
  local t0; t0=$(date +%s.%N)
  "$@" > "$out" 2>"$out.err"
  local rc=$?
  local t1; t1=$(date +%s.%N)
  p1=$(proc_ticks); s1=$(sys_ticks)
  python3 - "$p0" "$p1" "$s0" "$s1" "$t0" "$t1" "$hz" "$rc" > "$out.cpu" <<'EOF'
import sys, json
p0,p1=int(sys.argv[1]),int(sys.argv[2])
s0=list(map(int,sys.argv[3].split())); s1=list(map(int,sys.argv[4].split()))
t0,t1=float(sys.argv[5]),float(sys.argv[6]); hz=int(sys.argv[7])
wall=t1-t0; tot=s1[1]-s0[1] or 1
print(json.dumps({"rc":int(sys.argv[8]),"wall":wall,
  "daemon_cpu_pct":100.0*(p1-p0)/hz/wall,            # 100 = one core
  "sys_busy_pct":200.0*(s1[0]-s0[0])/tot,             # of 200 (2 cores)
  "softirq_pct":200.0*(s1[2]-s0[2])/tot}))
EOF
  return $rc
}

iperf_c() { # client_ns server_ip extra-args...
  local ns=$1 ip=$2; shift 2
  timeout $((SECS + 30)) ip netns exec "$ns" iperf3 -c "$ip" -t "$SECS" -J --connect-timeout 3000 "$@"
}

run_suite() { # setup client_ns server_ip
  local setup=$1 cns=$2 sip=$3 r; local d="$OUT/$setup"
  # libipsec's TUN device is fixed at MTU 1400 (raising it truncates packets), so
  # strongSwan gets 1372 B UDP payloads (= 1400 B inner IP packets); others UDP_LEN.
  local ulen=$UDP_LEN; [[ $setup == strongswan ]] && ulen=${SS_UDP_LEN:-1372}
  mkdir -p "$d"; echo "$ulen" > "$d/udp_len"
  # sanity + latency (unloaded)
  if ! nsx "$cns" ping -c 3 -i 0.2 -W 2 "$sip" > "$d/ping-sanity.txt" 2>&1; then
    log "$setup: no connectivity $cns -> $sip"; cat "$d/ping-sanity.txt" >&2
    echo "FAILED: no connectivity" > "$d/FAILED"; return 1
  fi
  nsx "$cns" ping -c "$PING_COUNT" -i 0.02 -q "$sip" > "$d/ping.txt" 2>&1
  for r in $(seq 1 "$REPS"); do
    log "$setup rep $r/$REPS: tcp"
    measure tcp  "$d/tcp-$r.json"  iperf_c "$cns" "$sip";                 sleep 1
    log "$setup rep $r/$REPS: tcp -P$PAR"
    measure tcpP "$d/tcpP-$r.json" iperf_c "$cns" "$sip" -P "$PAR";       sleep 1
    log "$setup rep $r/$REPS: tcp -R"
    measure tcpR "$d/tcpR-$r.json" iperf_c "$cns" "$sip" -R;              sleep 1
    log "$setup rep $r/$REPS: udp -b0 -l$ulen"
    measure udp  "$d/udp-$r.json"  iperf_c "$cns" "$sip" -u -b 0 -l "$ulen"; sleep 2
  done
  nsx "$cns" ping -c 3 -i 0.2 -W 2 "$sip" > "$d/ping-after.txt" 2>&1 || log "$setup: connectivity lost after tests"
  counters "$d/counters-after.txt"
}

counters() { # file: per-namespace link + UDP counters (drops/errors) for post-mortem
  local ns
  for ns in $NS_LAB $NS_GW $NS_VPC $NS_SRV; do
    echo "== $ns"; nsx $ns ip -s link 2>/dev/null | grep -v '^ *link/'
    nsx $ns grep -E '^Udp:' /proc/net/snmp
    nsx $ns grep -E '^TcpExt:' /proc/net/netstat | awk 'NR==1{split($0,h)} NR==2{for(i=2;i<=NF;i++) if ($i>0 && h[i] ~ /Drop|Prune|Collapse|Overflow|Retrans|Lost/) printf "%s=%s ", h[i], $i; print ""}'
  done > "$1" 2>&1
}

snapshot_state() { # setup
  local d="$OUT/$1"; mkdir -p "$d"
  {
    for ns in $NS_GW $NS_VPC; do
      echo "== $ns"; nsx $ns ip -br addr; nsx $ns ip route; nsx $ns ip -d link show 2>/dev/null | grep -E 'mtu|tun' | head -20
      nsx $ns wg show 2>/dev/null
    done
    ps -o pid,nlwp,comm,args -p "$(IFS=,; echo "${DAEMON_PIDS[*]:-1}")" 2>/dev/null
  } > "$d/state.txt" 2>&1
}

do_setup() {
  local s=$1
  log "=== setup $s"
  topo_up
  case "$s" in
    veth1hop)
      start_iperf_server $NS_VPC
      run_suite "$s" $NS_GW $VPC_WAN ;;
    baseline)
      routes_plain; start_iperf_server $NS_SRV
      run_suite "$s" $NS_LAB $SRV_IP ;;
    boringtun|boringtun-t*)
      local th=4; [[ $s == boringtun-t* ]] && th=${s#boringtun-t}
      start_boringtun "$th" || { log "boringtun start failed"; }
      snapshot_state "$s"; start_iperf_server $NS_SRV
      run_suite "$s" $NS_LAB $SRV_IP
      cp "$WORK"/bt-*.log "$WORK"/bt-*.out "$OUT/$s/" 2>/dev/null ;;
    wggo)
      start_wggo || log "wireguard-go start failed"
      snapshot_state "$s"; start_iperf_server $NS_SRV
      run_suite "$s" $NS_LAB $SRV_IP
      cp "$WORK"/wggo-*.out "$OUT/$s/" 2>/dev/null ;;
    strongswan)
      start_strongswan || log "strongswan start failed"
      sleep 1; snapshot_state "$s"; start_iperf_server $NS_SRV
      run_suite "$s" $NS_LAB $SRV_IP
      for side in gw vpc; do
        STRONGSWAN_CONF="$WORK/ss-$side/strongswan.conf" swanctl --list-sas --uri "unix://$WORK/ss-$side/charon.vici" > "$OUT/$s/sas-$side.txt" 2>&1
        for f in charon.log charon.out swanctl.out; do cp "$WORK/ss-$side/$f" "$OUT/$s/$side-$f" 2>/dev/null; done
      done ;;
    *) log "unknown setup $s"; return 1 ;;
  esac
  topo_down
}

versions() {
  {
    echo "date: $(date -Is)"; echo "kernel: $(uname -r)"; echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') x$(nproc)"
    echo "iperf3: $(iperf3 --version | head -1)"
    echo "wireguard-tools: $(dpkg-query -W -f='${Version}' wireguard-tools 2>/dev/null)"
    echo "wireguard-go: $(dpkg-query -W -f='${Version}' wireguard-go 2>/dev/null) ($(wireguard-go --version 2>&1 | head -1))"
    echo "boringtun-cli: $("$BT" --version 2>&1)"
    echo "strongswan: $(dpkg-query -W -f='${Version}' strongswan-charon 2>/dev/null)"
    echo "iputils-ping: $(dpkg-query -W -f='${Version}' iputils-ping 2>/dev/null)"
    echo "TUN_MTU=$TUN_MTU UDP_LEN=$UDP_LEN PAR=$PAR SECS=$SECS REPS=$REPS"
  } > "$OUT/versions.txt"
}

# ------------------------------------------------------------------ main
SETUPS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --install) do_install; shift ;;
    -r) REPS=$2; shift 2 ;;
    -t) SECS=$2; shift 2 ;;
    -o) OUT=$2; shift 2 ;;
    all) SETUPS+=(veth1hop baseline boringtun boringtun-t1 boringtun-t2 wggo strongswan); shift ;;
    -h|--help) sed -n '2,47p' "$0"; exit 0 ;;
    *) SETUPS+=("$1"); shift ;;
  esac
done
[[ ${#SETUPS[@]} -gt 0 ]] || { sed -n '2,47p' "$0"; exit 1; }
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
OUT=${OUT:-${TMPDIR:-/tmp}/peers-bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/ab-work.XXXXXX)
trap 'topo_down; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
versions
for s in "${SETUPS[@]}"; do do_setup "$s"; done
[[ -f "$HERE/summarize.py" ]] && python3 "$HERE/summarize.py" "$OUT" | tee "$OUT/summary.md"
