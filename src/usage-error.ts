// The error for bad input from a user (an option, a name, an address): the CLI prints its
// message as one line and exits non-zero. Library modules throw it too, so a caller can tell
// a mistake in what it was given from a failure of the system.
export class UsageError extends Error {
  override name = 'UsageError';
}
