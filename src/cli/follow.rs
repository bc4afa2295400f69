//! `deployd follow`: print a deployment's output as it is written.
