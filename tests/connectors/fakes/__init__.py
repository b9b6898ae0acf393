"""Contract fakes of the wallet providers: local HTTP servers that check every signature."""
