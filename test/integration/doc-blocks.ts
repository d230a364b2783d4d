// The ```sh command blocks of README.md and docs/*.md, by page and heading: the tests that run
// them as written read them here (readme.test.ts runs most; a feature's own test runs the
// blocks of its page, e.g. registry.test.ts). Also the other fenced blocks and the inline code
// of a section, for tests that check what a page shows (a configuration file, PromQL).
import { readdirSync, readFileSync } from 'node:fs';
import { ROOT } from './harness.js';

/** A fenced block: its page (README.md, docs/x.md), the heading above it (any level), its lines. */
export interface DocBlock {
  file: string;
  heading: string;
  lines: string[];
}

/** The pages whose ```sh blocks must all be run: README.md and docs/*.md. */
export function docPages(): string[] {
  return [
    'README.md',
    ...readdirSync(`${ROOT}docs`)
      .filter((f) => f.endsWith('.md'))
      .sort()
      .map((f) => `docs/${f}`),
  ];
}

/** Every ```sh block of a page, with the heading it stands under; blank lines left out. */
export function shBlocks(file: string): DocBlock[] {
  return fencedBlocks(file, 'sh').map((b) => ({ ...b, lines: b.lines.filter((l) => l.trim() !== '') }));
}

/** Every fenced block of language `lang` (```yaml) of a page, under its heading, as written. */
export function fencedBlocks(file: string, lang: string): DocBlock[] {
  const blocks: DocBlock[] = [];
  let heading = '';
  let fence: { lang: string; lines: string[] } | null = null;
  for (const line of readFileSync(`${ROOT}${file}`, 'utf8').split('\n')) {
    if (fence === null) {
      const open = /^```(\S*)\s*$/.exec(line);
      if (open) fence = { lang: open[1]!, lines: [] };
      else heading = /^#{1,6} (.*)$/.exec(line)?.[1] ?? heading;
    } else if (line === '```') {
      if (fence.lang === lang) blocks.push({ file, heading, lines: fence.lines });
      fence = null;
    } else {
      fence.lines.push(line);
    }
  }
  return blocks;
}

/**
 * The inline code (`...`) of the text under the headings of a page that `heading` matches,
 * outside fenced blocks, in order.
 */
export function inlineCode(file: string, heading: RegExp): string[] {
  const spans: string[] = [];
  let inSection = false;
  let fenced = false;
  for (const line of readFileSync(`${ROOT}${file}`, 'utf8').split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    else if (fenced) continue;
    else if (/^#{1,6} /.test(line)) inSection = heading.test(line.replace(/^#+ /, ''));
    else if (inSection) spans.push(...[...line.matchAll(/`([^`]+)`/g)].map((m) => m[1]!));
  }
  return spans;
}

/** A page and one of its headings. */
export type Section = readonly [file: string, heading: string];

/** The lines of all ```sh blocks of a section, in order; a section without one is an error. */
export function docCommands([file, heading]: Section): string[] {
  const blocks = shBlocks(file).filter((b) => b.heading === heading);
  if (blocks.length === 0) throw new Error(`${file} has no \`\`\`sh block under the heading '${heading}'`);
  return blocks.flatMap((b) => b.lines);
}
