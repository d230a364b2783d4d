// The lab's registry writer: an operator's client that stays connected, so the lab can time
// changes from the write itself rather than from a CLI's start-up (node, etcd3, TLS and auth:
// hundreds of ms). It runs in a lab namespace (the lab's process cannot reach the lab's
// networks), reads one change per line on stdin, applies it with the same Registry calls as
// `nfqlb registry`, and answers each on stdout with the revision and the entry's `ts` (the
// writer's clock, as the data model defines it), read back after the write.
//
//   {"op":"drain"|"undrain"|"delete","slot":3}   {"op":"claim","slot":3,"fwmark":103,"name":"t-3"}
//   -> {"revision":42,"ts":1764000000000}  or  {"error":"..."}
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { Registry } from '../registry/etcd.js';
import { ServiceKeys } from '../registry/model.js';
import { isMain, runCli } from './traffic/common.js';

/** argv[0] of the tool, as JSON. */
export interface WriterConfig {
  endpoints: string[];
  ca: string;
  cert: string;
  key: string;
  user: string;
  passwordFile: string;
  prefix: string;
  service: string;
}

export type WriterOp = { op: 'drain' | 'undrain' | 'delete'; slot: number } | { op: 'claim'; slot: number; fwmark: number; name: string };

export interface WriterAnswer {
  revision: number;
  ts: number;
}

async function apply(reg: Registry, keys: ServiceKeys, o: WriterOp): Promise<WriterAnswer> {
  const before = Date.now();
  if (o.op === 'claim') await reg.claim(keys, o.fwmark, { slot: o.slot, name: o.name });
  else if (o.op === 'delete') await reg.remove(keys, { slot: o.slot });
  else await reg.setState(keys, { slot: o.slot }, o.op === 'drain' ? 'draining' : 'active');
  const snap = await reg.snapshot(keys);
  const entry = snap.entries.find((e) => e.key === keys.target(o.slot));
  // A deleted key has no ts: the write was issued at `before`.
  const ts = entry ? (JSON.parse(entry.value) as { ts: number }).ts : before;
  return { revision: snap.revision, ts };
}

async function main(argv: string[]): Promise<number> {
  const c = JSON.parse(argv[0] ?? '') as WriterConfig;
  process.noDeprecation = true; // grpc's warning on IP endpoints says nothing here
  const reg = await Registry.connect({
    endpoints: c.endpoints,
    tls: { ca: readFileSync(c.ca), cert: readFileSync(c.cert), key: readFileSync(c.key) },
    user: { name: c.user, password: readFileSync(c.passwordFile, 'utf8').trim() },
    timeoutMs: 5000,
  });
  const keys = new ServiceKeys(c.prefix, c.service);
  process.stdout.write('{"ready":true}\n');
  for await (const line of createInterface({ input: process.stdin })) {
    let answer: WriterAnswer | { error: string };
    try {
      answer = await apply(reg, keys, JSON.parse(line) as WriterOp);
    } catch (e) {
      answer = { error: (e as Error).message };
    }
    process.stdout.write(`${JSON.stringify(answer)}\n`);
  }
  reg.close();
  return 0;
}

if (isMain(import.meta.url)) runCli(main);
