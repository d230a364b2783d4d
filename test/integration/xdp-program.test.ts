// Packet fixtures through the real XDP program (native/bpf/xdplb.bpf.c as built,
// verified and run by the kernel with BPF_PROG_TEST_RUN): VIP frames are redirected to the
// AF_XDP socket, everything else passes. Runs in a namespace of its own because the XSKMAP
// needs a bound AF_XDP socket (on its lo).

import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addNs, inNs, removeNs } from '../../src/lab/netns.js';
import { vipKey } from '../../src/xdp/table.js';
import { XDP_PASS, XDP_REDIRECT, xdpObjectFile, xskAddon } from '../../src/xdp/xsk.js';
import { eth } from '../fixtures/offload-cases.js';
import { fragmentPacket, ipv4, ipv6 } from '../fixtures/packet-builder.js';

const NS = 'txp-prog';
const ADDON = fileURLToPath(new URL('../../build/Release/xsk.node', import.meta.url));

// Loads the program (the object file is the second argument) with the given VIPs and a socket
// on lo queue 0, then prints the action for each frame; `remove` VIPs are deleted before a
// second round.
const RUNNER_JS = `
const x = require(process.argv[1]);
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const hex = (h) => Uint8Array.from(Buffer.from(h, 'hex'));
const prog = new x.XdpProgram(process.argv[2]);
for (const v of input.vips) prog.addVip(hex(v));
const umem = new x.Umem(64, 4096);
const sock = new x.XskSocket(umem, 'lo', 0, { rx: true });
prog.setSocket(0, sock.fd);
const before = input.frames.map((f) => prog.testRun(hex(f)));
for (const v of input.remove) prog.removeVip(hex(v));
const after = input.frames.map((f) => prog.testRun(hex(f)));
console.log(JSON.stringify({ before, after, vips: prog.vips().length, instructions: prog.instructions }));
sock.close(); umem.close(); prog.close();`;

// Three worker_threads in turn each load the addon and start forwarding on lo, then are
// terminated: the environment cleanup must close the poll handle before the addon is
// unloaded, and release socket and UMEM so the next worker can bind the same queue. The
// kernel frees a UMEM in deferred work, so a worker retries a busy queue for up to 2 s.
const WORKERS_JS = `
const { Worker } = require('worker_threads');
const code = \`
  const x = require(require('worker_threads').workerData);
  const deadline = Date.now() + 2000;
  let u, s;
  for (;;) {
    u = new x.Umem(64, 4096);
    try {
      s = new x.XskSocket(u, 'lo', 0, { rx: true, tx: true });
      break;
    } catch (e) {
      u.close();
      if (e.code !== 'EBUSY' || Date.now() > deadline) throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
  const a = new Uint32Array(8), l = new Uint32Array(8), v = new Uint8Array(8);
  s.start(s, a, l, v, () => {});
  require('worker_threads').parentPort.postMessage('polling');
\`;
(async () => {
  for (let i = 0; i < 3; i++) {
    const w = new Worker(code, { eval: true, workerData: process.argv[1] });
    await new Promise((resolve, reject) => {
      w.on('message', () => w.terminate());
      w.on('error', reject);
      w.on('exit', resolve);
    });
  }
  console.log('ok');
})().catch((e) => { console.error(e.message); process.exit(1); });`;

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

function thrown(f: () => void): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error('expected an error');
}

describe('the VIP-filter XDP program', () => {
  beforeAll(() => {
    removeNs(NS);
    addNs(NS);
  });
  afterAll(() => removeNs(NS));

  it('redirects IPv4/IPv6 VIP frames, passes the rest; a removed VIP passes again', () => {
    const vip4 = ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).tcp({ sport: 1, dport: 80 }).build();
    const vip6 = ipv6({ src: '2000::1', dst: '1000::' }).udp({ sport: 1, dport: 53 }).build();
    const fixtures: Array<[string, Uint8Array, number, number]> = [
      // name, frame, action with both VIPs, action after removing 10.0.0.0
      ['IPv4 TCP to the VIP', eth(vip4), XDP_REDIRECT, XDP_PASS],
      ['IPv6 UDP to the VIP', eth(vip6), XDP_REDIRECT, XDP_REDIRECT],
      [
        'IPv4 fragment to the VIP',
        eth(fragmentPacket(ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).udp({ sport: 1, dport: 2 }).payload(200).build(), 64)[1]!),
        XDP_REDIRECT,
        XDP_PASS,
      ],
      ['IPv4 ICMP to the VIP', eth(ipv4({ src: '50.0.0.1', dst: '10.0.0.0' }).icmp(8).build()), XDP_REDIRECT, XDP_PASS],
      ['IPv4 to another address', eth(ipv4({ src: '50.0.0.1', dst: '10.0.0.1' }).tcp({ sport: 1, dport: 80 }).build()), XDP_PASS, XDP_PASS],
      ['IPv4 from the VIP', eth(ipv4({ src: '10.0.0.0', dst: '50.0.0.1' }).tcp({ sport: 80, dport: 1 }).build()), XDP_PASS, XDP_PASS],
      ['IPv6 to another address', eth(ipv6({ src: '2000::1', dst: '1000::1' }).udp({ sport: 1, dport: 53 }).build()), XDP_PASS, XDP_PASS],
      [
        'IPv4-mapped IPv6 destination',
        eth(ipv6({ src: '2000::1', dst: '::ffff:10.0.0.0' }).udp({ sport: 1, dport: 53 }).build()),
        XDP_REDIRECT,
        XDP_PASS,
      ],
      ['ARP', eth(vip4, 0x0806), XDP_PASS, XDP_PASS],
      ['VLAN-tagged', eth(vip4, 0x8100), XDP_PASS, XDP_PASS],
      ['IPv4 cut before the destination', eth(vip4.subarray(0, 18)), XDP_PASS, XDP_PASS],
      ['IPv6 cut before the destination end', eth(vip6.subarray(0, 39)), XDP_PASS, XDP_PASS],
      ['Ethernet header only', eth(new Uint8Array(0)).subarray(0, 14), XDP_PASS, XDP_PASS],
    ];
    const input = {
      vips: [hex(vipKey('10.0.0.0')), hex(vipKey('1000::'))],
      remove: [hex(vipKey('10.0.0.0'))],
      frames: fixtures.map(([, frame]) => hex(frame)),
    };
    const out = JSON.parse(inNs(NS, [process.execPath, '-e', RUNNER_JS, ADDON, xdpObjectFile()], JSON.stringify(input))) as {
      before: number[];
      after: number[];
      vips: number;
      instructions: number;
    };
    const got = fixtures.map(([name], i) => [name, out.before[i], out.after[i]]);
    expect(got).toEqual(fixtures.map(([name, , before, after]) => [name, before, after]));
    expect(out.vips).toBe(1);
    // A few loads and two map calls per frame: every frame on the device runs it.
    expect(out.instructions).toBeLessThan(64);
  });

  // Maps only, no device: this can run in the test's own namespace.
  it('sizes its maps from the constructor and fails with .code and .errno, as Node does', () => {
    const prog = new (xskAddon().XdpProgram)(2, 1);
    try {
      prog.addVip(vipKey('10.0.0.1'));
      prog.addVip(vipKey('1000::1'));
      expect(thrown(() => prog.addVip(vipKey('10.0.0.2')))).toMatchObject({
        message: 'XdpProgram.addVip: Argument list too long (E2BIG)',
        code: 'E2BIG',
        errno: 7,
      });
      expect(thrown(() => prog.setSocket(1, 0))).toMatchObject({ code: 'E2BIG', errno: 7 });
      expect(thrown(() => prog.attach('txp-none0', 'generic'))).toMatchObject({
        message: 'XdpProgram: interface txp-none0: No such device (ENODEV)',
        code: 'ENODEV',
        errno: 19,
      });
      expect(prog.removeVip(vipKey('10.0.0.1'))).toBe(true);
      expect(prog.removeVip(vipKey('10.0.0.1'))).toBe(false);
      expect(prog.vips()).toEqual([vipKey('1000::1')]);
    } finally {
      prog.close();
    }
    expect(() => prog.vips()).toThrow('XdpProgram: closed');
  });

  it('loads in worker_threads and cleans up when a forwarding worker is terminated', () => {
    expect(inNs(NS, [process.execPath, '-e', WORKERS_JS, ADDON]).trim()).toBe('ok');
  });
});
