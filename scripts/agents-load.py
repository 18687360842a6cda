#!/usr/bin/env python3
"""How many agents a control plane carries, measured: N `valkyrie agent` processes (one slot
each, announcing themselves every second) on one control plane (its embedded store) or spread
over several sharing a PostgreSQL this script starts (`--nodes N`, or `--postgres` for one); the control planes' CPU while the agents only
heartbeat (20 s), then M built-in no-op jobs submitted over keep-alive HTTP and dispatched
across them (submission start to the last success, from the nodes' valkyrie_jobs_total).

    scripts/agents-load.py --agents 500 --jobs 20000 [--nodes 2 | --postgres] [--bin target/release/valkyrie]

Runs on loopback, cleans up after itself. Each agent is a process of its own (~10 MB).
"""
import argparse, glob, http.client, json, os, shutil, signal, socket, subprocess, sys, tempfile, time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read()


def succeeded(port):
    _, body = get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith('valkyrie_jobs_total{state="succeeded"}'):
            return int(float(line.split()[-1]))
    return 0


def connected(port):
    _, body = get(port, "/api/v1/agents")
    return sum(1 for a in json.loads(body)["agents"] if a["connected"])


def start_postgres(tmp):
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        sys.exit("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    b, port = bins[-1], free_port()
    d = os.path.join(tmp, "pg")
    os.makedirs(d)
    shutil.chown(d, "postgres")
    run = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(run + [f"{b}/initdb", "-D", f"{d}/data", "-A", "trust", "-U", "valkyrie", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = subprocess.Popen(run + [f"{b}/postgres", "-D", f"{d}/data", "-p", str(port), "-k", d,
                                     "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if subprocess.run([f"{b}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                          stdout=subprocess.DEVNULL).returncode == 0:
            break
        time.sleep(0.1)
    subprocess.run(run + [f"{b}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "valkyrie", "load"], check=True)
    return server, f"postgres://valkyrie@127.0.0.1:{port}/load", f"{d}/data/postmaster.pid"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--bin", default="target/release/valkyrie")
    ap.add_argument("--postgres", action="store_true", help="one node on PostgreSQL too")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="valkyrie-agents-load-")
    os.chmod(tmp, 0o755)  # the postgres user reaches its cluster inside
    procs, pg = [], None
    try:
        store = []
        if a.nodes > 1 or a.postgres:
            pg, url, pidfile = start_postgres(tmp)
            store = ["--store", url]
        ports = []
        for i in range(a.nodes):
            port = free_port()
            ports.append(port)
            cp = subprocess.Popen([a.bin, "control-plane", "--listen", f"tcp://127.0.0.1:{port}",
                                   "--data", f"{tmp}/cp-{i}", "--shards", "1", "--node-id", f"cp-{i}"] + store,
                                  stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/cp-{i}.log", "w"))
            procs.append(cp)
            for _ in range(200):
                try:
                    if get(port, "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
        planes = list(procs)
        t0 = time.time()
        for k in range(a.agents):
            urls = ",".join(f"tcp://127.0.0.1:{ports[(k + j) % a.nodes]}" for j in range(a.nodes))
            procs.append(subprocess.Popen([a.bin, "agent", "--connect", urls, "--id", f"agent-{k}",
                                           "--slots", "1", "--work", f"{tmp}/work-{k}", "--no-cgroups",
                                           "--heartbeat-ms", "1000"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while sum(connected(p) for p in ports) < a.agents:
            if time.time() - t0 > 120:
                sys.exit(f"only {sum(connected(p) for p in ports)} agents connected after 120 s")
            time.sleep(0.5)
        print(f"{a.agents} agents connected to {a.nodes} control plane(s) in {time.time() - t0:.1f} s")
        rss = sum(int(open(f"/proc/{p.pid}/statm").read().split()[1]) for p in procs[len(planes):])
        print(f"  agents' resident memory: {rss * os.sysconf('SC_PAGE_SIZE') / len(procs[len(planes):]) / 2**20:.1f} MiB each")
        c0 = [cpu_seconds(p.pid) for p in planes]
        time.sleep(20)
        c1 = [cpu_seconds(p.pid) for p in planes]
        for i, (x, y) in enumerate(zip(c0, c1)):
            print(f"  cp-{i}: {100 * (y - x) / 20:.1f}% of a core while {a.agents} agents heartbeat (1 s)")
        before = sum(succeeded(p) for p in ports)
        t1 = time.time()
        body = json.dumps({"builtin": "noop"})

        def submit(port, count):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for n in range(count):
                c.request("POST", "/api/v1/jobs", body, {"content-type": "application/json"})
                r = c.getresponse()
                r.read()
                if r.status not in (200, 201):
                    raise SystemExit(f"submission {n}: {r.status}")

        # Eight keep-alive connections spread over the nodes.
        import threading
        threads = [threading.Thread(target=submit, args=(ports[t % len(ports)], a.jobs // 8 + (t < a.jobs % 8)))
                   for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while sum(succeeded(p) for p in ports) - before < a.jobs:
            if time.time() - t1 > 600:
                sys.exit("jobs did not finish in 600 s")
            time.sleep(0.05)
        dt = time.time() - t1
        print(f"  {a.jobs} no-op jobs over {a.agents} one-slot agents: {a.jobs / dt:.0f} jobs/s ({dt:.1f} s, submission included)")
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        if pg:
            try:
                os.kill(int(open(pidfile).readline()), signal.SIGINT)
            except OSError:
                pass
            pg.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
