# bash completion for knockgate, made from its command table (do not edit).
_knockgate() {
	local cur prev cmd i
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	cmd=
	for ((i = 1; i < COMP_CWORD; i++)); do
		case ${COMP_WORDS[i]} in -*) ;; *) cmd=${COMP_WORDS[i]}; break ;; esac
	done
	if [[ -z $cmd ]]; then
		COMPREPLY=($(compgen -W 'help attach set confirm status events grant revoke detach run import knock keygen version' -- "$cur"))
		return
	fi
	case $cmd in
	help)
		COMPREPLY=($(compgen -W 'attach set confirm status events grant revoke detach run import knock keygen version' -- "$cur"))
		return
		;;
	attach)
		case $prev in --spa-keys) COMPREPLY=($(compgen -f -- "$cur")); return ;; esac
		case $prev in --gate|--sequence|--step-timeout|--open|--protect|--allow|--max-sources|--flow-idle-tcp|--flow-idle-udp|--max-flows|--spa-port|--spa-keys|--spa-window|--mode|--service|--confirm) return ;; esac
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--gate --sequence --step-timeout --open --protect --allow --max-sources --flows --flow-idle-tcp --flow-idle-udp --max-flows --spa-port --spa-keys --spa-window --mode --service --no-grant-self --confirm --help' -- "$cur"))
			return
		fi
		COMPREPLY=($(compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "$cur"))
		;;
	set)
		case $prev in --spa-keys) COMPREPLY=($(compgen -f -- "$cur")); return ;; esac
		case $prev in --sequence|--step-timeout|--open|--protect|--allow|--flow-idle-tcp|--flow-idle-udp|--spa-port|--spa-keys|--spa-window|--service|--confirm) return ;; esac
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--sequence --step-timeout --open --protect --allow --flows --flow-idle-tcp --flow-idle-udp --spa-port --spa-keys --spa-window --service --remove --confirm --help' -- "$cur"))
			return
		fi
		COMPREPLY=($(compgen -W "$(ls /sys/fs/bpf/knockgate 2>/dev/null) $(ls /sys/class/net 2>/dev/null)" -- "$cur"))
		;;
	confirm)
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--help' -- "$cur"))
			return
		fi
		COMPREPLY=($(compgen -W "$(ls /sys/fs/bpf/knockgate 2>/dev/null) $(ls /sys/class/net 2>/dev/null)" -- "$cur"))
		;;
	status)
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--json --flows --help' -- "$cur"))
			return
		fi
		COMPREPLY=($(compgen -W "$(ls /sys/fs/bpf/knockgate 2>/dev/null) $(ls /sys/class/net 2>/dev/null)" -- "$cur"))
		;;
	events)
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--json --help' -- "$cur"))
			return
		fi
		COMPREPLY=($(compgen -W "$(ls /sys/fs/bpf/knockgate 2>/dev/null) $(ls /sys/class/net 2>/dev/null)" -- "$cur"))
		;;
	grant)
		case $prev in --for|--service) return ;; esac
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--for --service --help' -- "$cur"))
			return
		fi
		COMPREPLY=($(compgen -W "$(ls /sys/fs/bpf/knockgate 2>/dev/null) $(ls /sys/class/net 2>/dev/null)" -- "$cur"))
		;;
	revoke)
		case $prev in --service) return ;; esac
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--service --help' -- "$cur"))
			return
		fi
		COMPREPLY=($(compgen -W "$(ls /sys/fs/bpf/knockgate 2>/dev/null) $(ls /sys/class/net 2>/dev/null)" -- "$cur"))
		;;
	detach)
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--help' -- "$cur"))
			return
		fi
		COMPREPLY=($(compgen -W "$(ls /sys/fs/bpf/knockgate 2>/dev/null) $(ls /sys/class/net 2>/dev/null)" -- "$cur"))
		;;
	run)
		case $prev in --config) COMPREPLY=($(compgen -f -- "$cur")); return ;; esac
		case $prev in --config|--confirm) return ;; esac
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--config --check --confirm --help' -- "$cur"))
			return
		fi
		;;
	import)
		case $prev in --interface|--hook-user) return ;; esac
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--interface -i --hook-user --help' -- "$cur"))
			return
		fi
		;;
	knock)
		case $prev in --spa-key) COMPREPLY=($(compgen -f -- "$cur")); return ;; esac
		case $prev in --delay|--spa-key|--key-id|--spa-port|--open-address|--service|--check) return ;; esac
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--delay --ipv4 -4 --ipv6 -6 --spa-key --key-id --spa-port --open-address --service --check --help' -- "$cur"))
			return
		fi
		COMPREPLY=($(compgen -A hostname -- "$cur"))
		;;
	keygen)
		case $prev in --id|--name|--open) return ;; esac
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--id --name --any-address --open --help' -- "$cur"))
			return
		fi
		;;
	version)
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--help' -- "$cur"))
			return
		fi
		;;
	esac
}
complete -F _knockgate knockgate
