"""Pod networking: CNI configuration and plugin execution, DNS and hosts files."""
