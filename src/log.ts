// Structured logs (JSON lines) for the daemons. Commands that print results use stdout directly.
import { pino } from 'pino';

export const log = pino({ name: 'tslb', level: process.env.LOG_LEVEL ?? 'info' });
