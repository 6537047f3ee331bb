/** Version of this SDK package. */
export const VERSION = '0.1.0';
