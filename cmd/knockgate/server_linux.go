package main

// serverCommands are the commands that attach, configure, watch and run
// the gate: an XDP program, so Linux only.
func serverCommands() []*command {
	return []*command{
		attachCommand(),
		setCommand(),
		confirmCommand(),
		statusCommand(),
		eventsCommand(),
		grantCommand(),
		revokeCommand(),
		detachCommand(),
		runCommand(),
		importCommand(),
	}
}
