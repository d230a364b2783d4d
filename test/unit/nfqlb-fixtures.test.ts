// The nfqlb fixtures (test/fixtures/nfqlb-fixtures.ts) against the Balancer: each packet's
// verdict, with stored fragments re-injected as the tun device would hand them back.
import { describe, expect, it } from 'vitest';
import { Balancer, SingleTable, type TargetSelector } from '../../src/nfqlb/lb.js';
import { FragTable } from '../../src/frag-table.js';
import { FlowSelector, FlowSet } from '../../src/flow-table.js';
import type { TargetTable } from '../../src/target-table.js';
import type { Tun } from '../../src/tun.js';
import { buildLbTierTable, buildTable, expectedFwmark, fixtureGroups, type LbConfig, type TableName } from '../fixtures/nfqlb-fixtures.js';

const tables: Record<TableName, TargetTable> = { main: buildTable('main'), web: buildTable('web'), other: buildTable('other') };

function balancer(config: LbConfig, injected: Uint8Array[]): Balancer {
  let selector: TargetSelector;
  if (config.mode === 'lb') {
    selector = new SingleTable(tables.main, 'main');
  } else {
    const set = new FlowSet();
    for (const f of config.flows ?? []) set.set(f);
    const flows = new FlowSelector({ promiscuousPing: config.promiscuousPing ?? false, openTable: (name) => tables[name as TableName] });
    flows.setFlows(set.specs());
    selector = flows;
  }
  const tun = { write: (b: Uint8Array, off: number, len: number) => injected.push(b.slice(off, off + len)) && len } as unknown as Tun;
  return new Balancer(selector, {
    hashMode: config.hashMode,
    notargetsFwmark: -1,
    nolbFwmark: config.nolbFwmark ?? -1,
    sctpEncap: config.sctpEncap ?? 0,
    lbTable: config.lbTier ? buildLbTierTable() : null,
    frags: new FragTable({ size: 500, buckets: 500, maxFragments: 100, mtu: 1500, ttlMs: 200 }),
    tun,
    now: () => 0,
  });
}

for (const group of fixtureGroups()) {
  describe(`nfqlb ${group.name}`, () => {
    it.each(group.fixtures)('$description', (fx) => {
      const injected: Uint8Array[] = [];
      const b = balancer(group.config, injected);
      const stored: { packet: Uint8Array; fwmark: number }[] = [];
      fx.packets.forEach((pkt, i) => {
        const e = fx.expect[i]!;
        const fw = b.fwmarkOf(pkt, 0, pkt.length);
        if (e === 'drop') {
          expect(fw, `packet ${i}`).toBeLessThan(0);
        } else if (e.stored) {
          expect(fw, `packet ${i} is stored (dropped)`).toBeLessThan(0);
          stored.push({ packet: pkt, fwmark: expectedFwmark(e, tables) });
        } else {
          expect(fw, `packet ${i}`).toBe(expectedFwmark(e, tables));
        }
        // Whatever was re-injected comes back through the queue and gets its datagram's verdict.
        for (const again of injected.splice(0)) {
          const at = stored.findIndex((s) => s.packet.length === again.length && s.packet.every((x, k) => x === again[k]));
          expect(at, 'an injected packet is one that was stored').toBeGreaterThanOrEqual(0);
          expect(b.fwmarkOf(again, 0, again.length)).toBe(stored[at]!.fwmark);
          stored.splice(at, 1);
        }
      });
      expect(stored, 'every stored fragment was re-injected').toEqual([]);
    });
  });
}
