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

_wirt_isos() {
    local line
    [ -f ~/wirt/info/isos.txt ] || return
    while IFS= read -r line; do
        case $line in '#'*|'') ;; *) printf '%s\n' "$line" ;; esac
    done < ~/wirt/info/isos.txt
}

# wirt set: KEY=VALUE words (bash splits "cdrom=deb" at '=' when COMP_WORDBREAKS has it).
_wirt_set() {
    local cur=$1 word=$1 key values v
    if [[ -n ${COMP_LINE-} ]]; then
        word=${COMP_LINE:0:COMP_POINT}
        word=${word##*[[:space:]]}
    fi
    if [[ $word != *=* ]]; then
        COMPREPLY=($(compgen -W "memory_mib= vcpus= cdrom= boot=$2" -- "$cur"))
        compopt -o nospace 2>/dev/null
        return
    fi
    key=${word%%=*}
    case $key in
        cdrom) values="none $(_wirt_isos)" ;;
        boot) values="hd cdrom network hd,cdrom cdrom,hd hd,network network,hd" ;;
        *) return ;;
    esac
    if [[ $cur == "$word" ]]; then  # one word: complete key=value
        COMPREPLY=()
        for v in $values; do
            [[ $key=$v == "$cur"* ]] && COMPREPLY+=("$key=$v")
        done
    else  # split at '=': complete the value alone
        v=${word#*=}
        COMPREPLY=($(compgen -W "$values" -- "$v"))
    fi
}

_wirt() {
    local cur prev cmd i opts
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    cmd=
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            --vm|--config|--layout|--host|--timeout|--mode|--name|--minutes|-o|--output|-n|--lines)
                ((i++)) ;;
            -*) ;;
            *) cmd=${COMP_WORDS[i]}; break ;;
        esac
    done
    case $prev in
        --vm) COMPREPLY=($(compgen -W "$(_wirt_vms)" -- "$cur")); return ;;
        --layout) COMPREPLY=($(compgen -W "wirt legacy" -- "$cur")); return ;;
        --mode) COMPREPLY=($(compgen -W "acpi agent" -- "$cur")); return ;;
        --minutes) COMPREPLY=($(compgen -W "5 15 60 240" -- "$cur")); return ;;
        --config|-o|--output) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --host) COMPREPLY=($(compgen -A hostname -- "$cur")); return ;;
        --timeout|--name|-n|--lines) return ;;
    esac
    opts="--vm --json --config --layout --help"
    local commands="list status start shutdown stop destroy kill reboot reset suspend resume
        autostart console screenshot serial refresh snapshot revert snapshot-delete snapshots
        log history create cancel set settings isos help admin"
    case $cmd in
        "")
            COMPREPLY=($(compgen -W "$commands $opts --host --version" -- "$cur"))
            return ;;
        help)
            COMPREPLY=($(compgen -W "$commands" -- "$cur"))
            return ;;
        cancel)  # wirt cancel VM ACTION: the VM first, then the waiting command's action
            if [[ $cur != -* && $prev != cancel ]]; then
                COMPREPLY=($(compgen -W "start shutdown stop destroy kill reboot reset suspend
                    resume autostart status snapshot revert snapshot-delete console screenshot
                    serial" -- "$cur"))
                return
            fi ;;
        start) opts+=" --paused --force-boot --wait --timeout" ;;
        shutdown|stop|reboot) opts+=" --mode --wait --timeout" ;;
        destroy|kill) opts+=" --graceful --wait --timeout" ;;
        autostart) opts+=" --disable --wait --timeout" ;;
        reset|suspend|resume|refresh) opts+=" --wait --timeout" ;;
        snapshot|revert|snapshot-delete) opts+=" --name --wait --timeout" ;;
        snapshots) ;;
        console) opts+=" --minutes --wait --timeout" ;;
        screenshot) opts+=" --output --wait --timeout" ;;
        serial) opts+=" --wait --timeout" ;;
        log) opts+=" --lines --follow" ;;
        history) opts+=" --lines" ;;
        set)
            opts+=" --wait --timeout"
            if [[ $cur != -* ]]; then
                local vms="" n=0
                for ((i = i + 1; i < COMP_CWORD; i++)); do
                    case ${COMP_WORDS[i]} in
                        --vm|--config|--layout|--timeout) ((i++)); n=1 ;;
                        -*|*=*|=) ;;
                        *) [[ ${COMP_WORDS[i+1]-} == = ]] || n=1 ;;
                    esac
                done
                ((n)) || vms=" $(_wirt_vms)"
                _wirt_set "$cur" "$vms"
                return
            fi ;;
        isos) ;;
        admin)  # wirt admin VERB ...: the verb, then its options (root's parser)
            local verb="" j
            for ((j = i + 1; j < COMP_CWORD; j++)); do
                case ${COMP_WORDS[j]} in
                    --config|--layout|--host|--as|--user|-n|--lines) ((j++)) ;;
                    -*) ;;
                    *) verb=${COMP_WORDS[j]}; break ;;
                esac
            done
            case $prev in
                --as|-n|--lines) return ;;
                --user) COMPREPLY=($(compgen -u -- "$cur")); return ;;
                --config) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --layout) COMPREPLY=($(compgen -W "wirt legacy" -- "$cur")); return ;;
                --host) COMPREPLY=($(compgen -A hostname -- "$cur")); return ;;
            esac
            opts="--json --config --layout --help"
            case $verb in
                "")
                    [[ $cur == -* ]] || opts="assign unassign run audit quota" ;;
                assign) opts+=" --host --as" ;;
                unassign) opts+=" --host" ;;
                run) opts+=" --user --dry-run" ;;
                audit) opts+=" --lines" ;;
            esac
            [[ $cur == -* || -z $verb ]] && COMPREPLY=($(compgen -W "$opts" -- "$cur"))
            return ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$(_wirt_vms)" -- "$cur"))
    fi
}

complete -F _wirt wirt
