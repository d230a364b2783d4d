#!/usr/bin/env node
import { main } from '../dist/src/cli/lblab.js';
process.exitCode = await main(process.argv.slice(2));
