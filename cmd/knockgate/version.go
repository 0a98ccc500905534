package main

import "fmt"

func versionCommand() *command {
	return &command{
		name:     "version",
		synopsis: "",
		summary:  "print the version",
		help:     "Print the version of this knockgate build.",
		flags:    newFlags("version"),
		run: func(e *env, args []string) error {
			fmt.Fprintf(e.stdout, "knockgate %s\n", version)
			return nil
		},
	}
}
