// The servers health probes reach in the kernel tests and the bench: on each server of a lab, an
// HTTP server (GET /healthz answers 200) on the server's own addresses for good, and on each VIP
// while the caller wants it, so that a test can stop a target serving the VIP while it still
// answers on its own address.
import type { ChildProcess } from 'node:child_process';
import { type Family, serverAddr, type Topology, VIP } from './topology.js';

/** How long a server may take to listen or to act on a command. */
const ANSWER_MS = 10_000;

/** The README's servers answer on port 5001, and so do these. */
export const VIP_PORT = 5001;

// Listens on the server's own addresses for good, and on each VIP while told to ("open 4",
// "close 6" on stdin); GET /healthz answers 200. Prints "ok" after each command.
const SERVER_JS = `
const http = require('http');
const [own4, own6, vip4, vip6] = process.argv.slice(1);
const handler = (req, res) => res.writeHead(req.url === '/healthz' ? 200 : 404).end();
const listen = (host) => new Promise((r) => { const s = http.createServer(handler); s.listen(${VIP_PORT}, host, () => r(s)); });
const vip = { 4: null, 6: null };
(async () => {
  await listen(own4); await listen(own6);
  vip[4] = await listen(vip4); vip[6] = await listen(vip6);
  console.log('ok');
  let buf = '';
  process.stdin.on('data', async (d) => {
    buf += d;
    for (let nl; (nl = buf.indexOf('\\n')) >= 0; buf = buf.slice(nl + 1)) {
      const [cmd, fam] = buf.slice(0, nl).split(' ');
      if (cmd === 'open' && !vip[fam]) vip[fam] = await listen(fam === '4' ? vip4 : vip6);
      if (cmd === 'close' && vip[fam]) { vip[fam].closeAllConnections(); await new Promise((r) => vip[fam].close(r)); vip[fam] = null; }
      console.log('ok');
    }
  });
})();`;

interface Server {
  proc: ChildProcess;
  out: string;
}

/** The "ok" lines server `s` printed so far. */
const said = (s: Server): number => s.out.split('ok').length - 1;

/** Resolves once server `s` has said "ok" `n` times; rejects when it exits or after ANSWER_MS. */
function oks(s: Server, n: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (said(s) < n) return;
      done();
      resolve();
    };
    const exited = (): void => {
      done();
      reject(new Error(`${what}: the server exited`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out after ${ANSWER_MS} ms waiting for ${what}`));
    }, ANSWER_MS);
    const done = (): void => {
      clearTimeout(timer);
      s.proc.stdout!.off('data', check);
      s.proc.off('exit', exited);
    };
    s.proc.stdout!.on('data', check);
    s.proc.once('exit', exited);
    check();
  });
}

export class VipServers {
  private constructor(private readonly servers: Server[]) {}

  /** Starts one on each server of `topo` (added to `procs`, the caller's processes); resolves once all listen. */
  static async start(topo: Topology, procs: ChildProcess[]): Promise<VipServers> {
    const servers = Array.from({ length: topo.nvm }, (_, k) => {
      const n = k + 1;
      const argv = ['node', '-e', SERVER_JS, serverAddr(n, 4), serverAddr(n, 6), VIP[4], VIP[6]];
      const proc = topo.spawn(topo.ns.server(n), argv, { stdio: ['pipe', 'pipe', 'pipe'] });
      procs.push(proc);
      const s: Server = { proc, out: '' };
      proc.stdout!.on('data', (d: Buffer) => (s.out += d.toString()));
      return s;
    });
    await Promise.all(servers.map((s, k) => oks(s, 1, `server ${k + 1} to listen`)));
    return new VipServers(servers);
  }

  /** Opens or closes server n's VIP listener of a family, and waits until it did. */
  async vipListener(n: number, how: 'open' | 'close', family: Family): Promise<void> {
    const s = this.servers[n - 1]!;
    const answered = oks(s, said(s) + 1, `server ${n} to ${how} its VIP listener`);
    s.proc.stdin!.write(`${how} ${family}\n`);
    await answered;
  }
}
