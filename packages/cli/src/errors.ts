/** An error the CLI reports as `Error: <message>` before exiting with `exitCode`. */
export class CliError extends Error {
  override name = 'CliError';
  /** Process exit code (default 1). */
  readonly exitCode: number;

  /**
   * @param message - Shown after `Error: `.
   * @param exitCode - Process exit code.
   */
  constructor(message: string, exitCode = 1) {
    super(message);
    this.exitCode = exitCode;
  }
}
