//! A local emulator of the Genesys Cloud endpoints pdq uses.
