/** Version of the CLI package (a test checks that it matches package.json). */
export const VERSION = '0.1.0';
