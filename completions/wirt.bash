# bash completion for wirt: commands, their flags, and your VM folder names.
# Install: install -m 0644 completions/wirt.bash /usr/share/bash-completion/completions/wirt

_wirt_vms() {
    local d
    for d in ~/wirt/service/vm/*/ ~/virsh/dom-*/; do
        [ -d "$d" ] || continue
        d=${d%/}
        d=${d##*/}
        printf '%s\n' "${d#dom-}"
    done
}

_wirt() {
    local cur prev cmd i opts
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    cmd=
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            --vm|--config|--layout|--timeout|--mode|-n|--lines) ((i++)) ;;
            -*) ;;
            *) cmd=${COMP_WORDS[i]}; break ;;
        esac
    done
    case $prev in
        --vm) COMPREPLY=($(compgen -W "$(_wirt_vms)" -- "$cur")); return ;;
        --layout) COMPREPLY=($(compgen -W "wirt legacy" -- "$cur")); return ;;
        --mode) COMPREPLY=($(compgen -W "acpi agent" -- "$cur")); return ;;
        --config) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --timeout|-n|--lines) return ;;
    esac
    opts="--vm --json --config --layout --help"
    case $cmd in
        "")
            COMPREPLY=($(compgen -W "list status start shutdown stop destroy kill reboot reset
                suspend resume autostart refresh log history create admin $opts" -- "$cur"))
            return ;;
        start) opts+=" --paused --force-boot --wait --timeout" ;;
        shutdown|stop|reboot) opts+=" --mode --wait --timeout" ;;
        destroy|kill) opts+=" --graceful --wait --timeout" ;;
        autostart) opts+=" --disable --wait --timeout" ;;
        reset|suspend|resume|refresh) opts+=" --wait --timeout" ;;
        log) opts+=" --lines --follow" ;;
        history) opts+=" --lines" ;;
        admin)
            COMPREPLY=($(compgen -W "assign unassign run audit" -- "$cur"))
            return ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$(_wirt_vms)" -- "$cur"))
    fi
}

complete -F _wirt wirt
