// The nfqlb fixtures (test/fixtures/nfqlb-fixtures.ts) against the Balancer: each packet's
// verdict, with stored fragments re-injected as the tun device would hand them back.
import { describe, expect, it } from 'vitest';
import type { TargetTable } from '../../src/target-table.js';
import { buildTable, expectedFwmark, fixtureBalancer, fixtureGroups, type LbConfig, type TableName } from '../fixtures/nfqlb-fixtures.js';

const tables: Record<TableName, TargetTable> = { main: buildTable('main'), web: buildTable('web'), other: buildTable('other') };
const balancer = (config: LbConfig, injected: Uint8Array[]) => fixtureBalancer(config, tables, injected);

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
