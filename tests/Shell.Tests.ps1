#Requires -Version 7.0
# Shell sessions through the module's own data channel and the sandbox's agent (a real local shell on a PTY).
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Sandbox = Start-TestSandbox
    $script:Aws = $Sandbox.Aws
}

AfterAll { Stop-TestSandbox $Sandbox }

Describe 'Start-BastionSession -Command (non-interactive, for scripts)' {
    It 'returns the output lines (shell syntax works) and the exit code in $LASTEXITCODE' {
        $global:LASTEXITCODE = 0
        # The agent returns stdout and stderr together, after the command has ended.
        $out = @(Start-BastionSession -Target i-0a1b2c3d4e5f60001 -Command 'echo one; echo "two''s" 1>&2; echo three | tr a-z A-Z; exit 3' @Aws -ErrorVariable errs -ErrorAction SilentlyContinue)
        $out | Should -Be @('one', "two's", 'THREE')
        ($errs | Where-Object { $_.FullyQualifiedErrorId -like 'RemoteCommandFailed,*' }) | Should -Not -BeNullOrEmpty
        $global:LASTEXITCODE | Should -Be 3
    }

    It 'succeeds quietly with exit code 0' {
        $out = @(Start-BastionSession -Target i-0a1b2c3d4e5f60001 -Command 'uname -s' @Aws -ErrorVariable errs -InformationVariable info)
        $out | Should -Be @((& uname -s))
        $errs | Should -BeNullOrEmpty
        # Without encryption the agent has nothing to say at the end of the handshake.
        @($info | Where-Object { $_.Tags -contains 'BastionTools.CustomerMessage' }) | Should -BeNullOrEmpty
        $global:LASTEXITCODE | Should -Be 0
    }

    It 'refuses an interactive shell without a terminal, with ShellNeedsTerminal' {
        $r = Invoke-ChildPwsh -Script @"
Import-Module '$(Get-TestModulePath)'
try { Start-BastionSession -Target i-0a1b2c3d4e5f60001 -AccessKey '$($Aws.AccessKey)' -SecretKey '$($Aws.SecretKey)' -Region '$($Aws.Region)' -EndpointUrl '$($Aws.EndpointUrl)' -ErrorAction Stop }
catch { `$_.FullyQualifiedErrorId }
"@
        $r.Output | Should -Match 'ShellNeedsTerminal,BastionTools.Commands.StartBastionSessionCommand'
    }
}

Describe 'Start-BastionSession -Command on a Windows bastion' {
    # The agent on Windows runs the command's words as arguments of powershell.exe; the sandbox plays it with this
    # PowerShell (7.x, reading the words as 5.1 does), so the module must send PowerShell, not sh.
    BeforeAll {
        $script:WinId = 'i-0a1b2c3d4e5f60010'
        $script:Win = Start-TestSandbox -World @{ instances = @(
                @{ instanceId = $WinId; name = 'bastion-windows'; platformType = 'Windows'; platformName = 'Microsoft Windows Server 2022 Datacenter'; platformVersion = '10.0.20348'; platformDetails = 'Windows' }
            ) }
        $script:WinAws = $Win.Aws
        # A key that may only start, resume and end sessions: the platform cannot be looked up with it.
        $script:StartOnly = @{ AccessKey = 'AKIASTARTONLY0000001'; SecretKey = 'start/only/secret'; Region = $Win.region; EndpointUrl = $Win.ssm }
        $policy = @{ Version = '2012-10-17'; Statement = @(@{ Effect = 'Allow'; Action = @('ssm:StartSession', 'ssm:TerminateSession', 'ssm:ResumeSession'); Resource = @('*') }) }
        $body = @{ secretAccessKey = $StartOnly.SecretKey; userName = 'startonly'; policy = $policy } | ConvertTo-Json -Depth 10
        $null = Invoke-RestMethod -Method Put -Uri "$($Win.control)iam/credentials/$($StartOnly.AccessKey)" -Body $body -ContentType 'application/json'
    }
    AfterAll { Stop-TestSandbox $Win }

    It 'runs the command in PowerShell (platform from ssm:DescribeInstanceInformation): output lines and $LASTEXITCODE' {
        $global:LASTEXITCODE = 0
        $command = '$n = "wörld"; Write-Output "hello $n" ''it''''s''; Write-Error oops; exit 3'
        $out = @(Start-BastionSession -Target $WinId -Command $command @WinAws -ErrorVariable errs -ErrorAction SilentlyContinue -Verbose 4>&1)
        $verbose = @($out | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] } | ForEach-Object Message)
        $lines = @($out | Where-Object { $_ -is [string] })
        $lines[0..1] | Should -Be @('hello wörld', "it's")
        ($lines -join "`n") | Should -Match 'oops'
        $global:LASTEXITCODE | Should -Be 3
        ($errs | Where-Object { $_.FullyQualifiedErrorId -like 'RemoteCommandFailed,*' }) | Should -Not -BeNullOrEmpty
        ($verbose -join "`n") | Should -Match 'Windows PowerShell \(PlatformType Windows \(ssm:DescribeInstanceInformation\)\)'
    }

    It 'succeeds with exit code 0 and no error' {
        $out = @(Start-BastionSession -Target $WinId -Command 'Get-Date -Year 2024 -Month 5 -Day 6 -Format yyyy-MM-dd' @WinAws -ErrorVariable errs)
        $out | Should -Be @('2024-05-06')
        $errs | Should -BeNullOrEmpty
        $global:LASTEXITCODE | Should -Be 0
    }

    It 'when the platform cannot be looked up: -Platform Windows, and a warning that says so without it' {
        $global:LASTEXITCODE = 0
        $out = @(Start-BastionSession -Target $WinId -Command 'Write-Output fine' -Platform Windows @StartOnly -ErrorVariable errs)
        $out | Should -Be @('fine')
        $errs | Should -BeNullOrEmpty
        $global:LASTEXITCODE | Should -Be 0

        # Without it Linux is assumed: PowerShell gets "sh -c ..." and no exit status comes back, which says what to do.
        $null = Start-BastionSession -Target $WinId -Command 'Write-Output fine' @StartOnly -WarningVariable warns -ErrorAction SilentlyContinue 3>$null
        "$warns" | Should -Match '-Platform Windows'
    }
}

Describe 'Interactive shell, driven as a person would in a terminal (tmux)' {
    BeforeAll {
        $script:Tmux = (Get-Command tmux -ErrorAction SilentlyContinue).Source
        $script:Name = 'bt-' + [guid]::NewGuid().ToString('n').Substring(0, 8)
        $pwsh = [Environment]::ProcessPath
        $prefix = if ([IO.Path]::GetFileNameWithoutExtension($pwsh) -eq 'dotnet') { "'$pwsh' '$(Join-Path $PSHOME 'pwsh.dll')'" } else { "'$pwsh'" }
        $script:ScriptFile = Join-Path ([IO.Path]::GetTempPath()) "$Name.ps1"
        Set-Content -Path $ScriptFile -Value @"
`$env:AWS_EC2_METADATA_DISABLED = 'true'
Import-Module '$(Get-TestModulePath)'
Start-BastionSession -Target i-0a1b2c3d4e5f60001 -AccessKey '$($Aws.AccessKey)' -SecretKey '$($Aws.SecretKey)' -Region '$($Aws.Region)' -EndpointUrl '$($Aws.EndpointUrl)'
Write-Host "PWSH-BACK-`$([Console]::TreatControlCAsInput)"
Start-Sleep -Seconds 30
"@
        function script:Screen { (& $Tmux capture-pane -p -t $Name -S -200) -join "`n" }
        function script:WaitFor([string] $Pattern, [int] $Seconds = 20) {
            $deadline = [DateTime]::UtcNow.AddSeconds($Seconds)
            while ([DateTime]::UtcNow -lt $deadline) {
                $s = Screen
                if ($s -match $Pattern) { return $s }
                Start-Sleep -Milliseconds 200
            }
            throw "Timed out waiting for /$Pattern/ on the screen:`n$(Screen)"
        }
        & $Tmux new-session -d -s $Name -x 120 -y 40 "$prefix -NoProfile -File '$ScriptFile'"
    }

    AfterAll {
        if ($Tmux) { & $Tmux kill-session -t $Name 2>$null }
        Remove-Item $ScriptFile -ErrorAction SilentlyContinue
    }

    It 'shows a prompt, runs a command and shows its output' {
        WaitFor '(?m)[\$#]\s*$' | Out-Null
        & $Tmux send-keys -t $Name 'echo hello-$((6*7))' Enter
        WaitFor 'hello-42' | Should -Match '(?m)^hello-42\s*$'
    }

    It 'sends the terminal size at start and when the window is resized' {
        & $Tmux send-keys -t $Name 'stty size' Enter
        WaitFor '(?m)^40 120\s*$' | Out-Null
        & $Tmux resize-window -t $Name -x 100 -y 30
        Start-Sleep -Milliseconds 800
        & $Tmux send-keys -t $Name 'clear; stty size' Enter
        WaitFor '(?m)^30 100\s*$' | Out-Null
    }

    It 'passes Ctrl-C to the remote shell instead of ending the session' {
        # Ctrl-C once the job is running: its marker comes from the job itself (a child shell that becomes the sleep), so
        # the job is the terminal's foreground when it shows. (After a guessed 800 ms, a Ctrl-C that came while the
        # remote shell was still starting the sleep was lost: seen once in CI on a loaded machine.)
        & $Tmux send-keys -t $Name "clear; sh -c 'echo sleeping-`$((3*3)); exec sleep 25'; echo not-interrupted" Enter
        WaitFor '(?m)^sleeping-9\s*$' | Out-Null
        & $Tmux send-keys -t $Name C-c
        & $Tmux send-keys -t $Name 'echo after-$((2+3))' Enter
        $s = WaitFor 'after-5' 10
        $s | Should -Not -Match 'not-interrupted'
    }

    It 'ends with exit, shows the closing message and gives the terminal back to PowerShell' {
        & $Tmux send-keys -t $Name 'exit' Enter
        $s = WaitFor 'PWSH-BACK-' 20
        $s | Should -Match 'Exiting session'
        $s | Should -Match 'PWSH-BACK-False'
    }
}

Describe 'KMS-encrypted sessions (the Session Manager preferences name a key)' {
    BeforeAll {
        # A sandbox whose account preferences encrypt session data with the default key (alias/bastion-session-data:
        # the sandbox user may generate data keys, the instances' role may decrypt them).
        $script:Kms = Start-TestSandbox -World @{ sessionManagerPreferences = @{ kmsKeyId = 'alias/bastion-session-data' } }
        $script:KmsAws = $Kms.Aws
        function script:Set-Preference([string] $KeyId) {
            Invoke-RestMethod -Method Put -Uri ($Kms.control + 'preferences') -ContentType 'application/json' -Body (@{ kmsKeyId = $KeyId } | ConvertTo-Json) | Out-Null
        }
        function script:Set-AgentFault([string] $Fault) {
            Invoke-RestMethod -Method Put -Uri ($Kms.control + 'agent') -ContentType 'application/json' -Body (@{ encryptionFault = $Fault } | ConvertTo-Json) | Out-Null
        }
        # The sandbox's control answers as PowerShell arrays (an empty JSON array stays an empty array).
        function script:Get-Control([string] $Path) { , ((Invoke-WebRequest -Uri ($Kms.control + $Path)).Content | ConvertFrom-Json -NoEnumerate) }
        # Everything a user could see: output, errors, warnings, verbose, debug, information, as text.
        function script:Get-AllText($Records) { ($Records | ForEach-Object { "$_"; if ($_ -is [System.Management.Automation.ErrorRecord]) { $_.Exception.ToString() } }) -join "`n" }
    }

    AfterAll { Stop-TestSandbox $Kms }

    AfterEach {
        Set-Preference 'alias/bastion-session-data'
        Set-AgentFault 'None'
    }

    It '-Command runs encrypted: output, exit code, Verbose says so, and no key material or secret in any stream' {
        $global:LASTEXITCODE = 0
        $callsBefore = (Get-Control 'kms').calls.Count
        $issuedBefore = (Get-Control 'kms/issued-data-keys').Count
        $all = @(Start-BastionSession -Target i-0a1b2c3d4e5f60001 -Command 'echo enc-$((6*7)); exit 4' @KmsAws -Verbose -Debug -ErrorAction Continue *>&1)
        $out = @($all | Where-Object { $_ -is [string] })
        $out | Should -Be @('enc-42')
        $global:LASTEXITCODE | Should -Be 4
        ($all | Where-Object { $_ -is [System.Management.Automation.ErrorRecord] }).FullyQualifiedErrorId | Should -Be 'RemoteCommandFailed,BastionTools.Commands.StartBastionSessionCommand'
        ($all | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }).Message -join "`n" | Should -Match 'encrypted with AWS KMS \(alias/bastion-session-data\)'
        # The agent's HandshakeComplete CustomerMessage, shown once on the Information stream as the official client prints it.
        $customer = @($all | Where-Object { $_ -is [System.Management.Automation.InformationRecord] -and $_.Tags -contains 'BastionTools.CustomerMessage' })
        $customer.Count | Should -Be 1
        "$($customer[0].MessageData)" | Should -Be 'This session is encrypted using AWS KMS.'
        $customer[0].Tags | Should -Contain 'PSHOST'

        $calls = @((Get-Control 'kms').calls | Select-Object -Skip $callsBefore)
        $calls.Count | Should -Be 2
        $calls[0].operation | Should -Be 'GenerateDataKey'
        $calls[0].principal | Should -Be 'arn:aws:iam::123456789012:user/sandbox-user'
        $calls[0].errorCode | Should -BeNullOrEmpty
        $calls[0].encryptionContext.'aws:ssm:TargetId' | Should -Be 'i-0a1b2c3d4e5f60001'
        $calls[0].encryptionContext.'aws:ssm:RandomChallenge' | Should -Not -BeNullOrEmpty
        $calls[1].operation | Should -Be 'Decrypt'
        $calls[1].principal | Should -Match '^arn:aws:sts::123456789012:assumed-role/BastionInstanceRole/i-0a1b2c3d4e5f60001$'
        $calls[1].errorCode | Should -BeNullOrEmpty

        $text = Get-AllText $all
        $issued = @(Get-Control 'kms/issued-data-keys' | ForEach-Object { $_ } | Select-Object -Skip $issuedBefore)
        $issued.Count | Should -Be 1
        $text | Should -Not -Match ([regex]::Escape($issued[0].plaintext))
        $text | Should -Not -Match ([regex]::Escape($issued[0].ciphertextBlob))
        # Nor a recognisable part of the data key, in any encoding a message could use.
        $keyBytes = [Convert]::FromBase64String($issued[0].plaintext)
        $text | Should -Not -Match ([Convert]::ToHexString($keyBytes, 0, 16))
        $text | Should -Not -Match ([regex]::Escape([Convert]::ToBase64String($keyBytes, 0, 32)))
        $text | Should -Not -Match ([regex]::Escape($KmsAws.SecretKey))
    }

    It 'a denied kms:GenerateDataKey ends with SessionEncryptionDenied (PermissionDenied), runs nothing and leaks nothing' {
        # This key's policy lets no operator generate data keys.
        Set-Preference 'alias/bastion-session-data-locked'
        $issuedBefore = (Get-Control 'kms/issued-data-keys').Count
        $all = @(Start-BastionSession -Target i-0a1b2c3d4e5f60001 -Command 'echo must-not-run-$((1+1))' @KmsAws -Verbose -Debug -ErrorAction Continue *>&1)
        $errors = @($all | Where-Object { $_ -is [System.Management.Automation.ErrorRecord] })
        $errors.Count | Should -Be 1
        $errors[0].FullyQualifiedErrorId | Should -Be 'SessionEncryptionDenied,BastionTools.Commands.StartBastionSessionCommand'
        $errors[0].CategoryInfo.Category | Should -Be 'PermissionDenied'
        $errors[0].Exception.Message | Should -Match 'kms:GenerateDataKey'
        $errors[0].ErrorDetails.RecommendedAction | Should -Match 'kms:GenerateDataKey'
        @($all | Where-Object { $_ -is [string] }) | Should -BeNullOrEmpty
        $text = Get-AllText $all
        $text | Should -Not -Match 'must-not-run-2'
        $text | Should -Not -Match ([regex]::Escape($KmsAws.SecretKey))
        (Get-Control 'kms/issued-data-keys').Count | Should -Be $issuedBefore
        $denied = (Get-Control 'kms').calls[-1]
        $denied.operation | Should -Be 'GenerateDataKey'
        $denied.errorCode | Should -Be 'AccessDeniedException'
    }

    It 'an altered payload from the agent ends with SessionDecryptionFailed (SecurityError)' {
        Set-AgentFault 'TamperOutput'
        $all = @(Start-BastionSession -Target i-0a1b2c3d4e5f60001 -Command 'echo tampered-$((2*2))' @KmsAws -ErrorAction Continue *>&1)
        $errors = @($all | Where-Object { $_ -is [System.Management.Automation.ErrorRecord] })
        $errors.Count | Should -Be 1
        $errors[0].FullyQualifiedErrorId | Should -Be 'SessionDecryptionFailed,BastionTools.Commands.StartBastionSessionCommand'
        $errors[0].CategoryInfo.Category | Should -Be 'SecurityError'
        (Get-AllText $all) | Should -Not -Match 'tampered-4'
    }

    It 'an interactive shell is encrypted too (driven in tmux)' {
        $tmux = (Get-Command tmux -ErrorAction Stop).Source
        $name = 'bt-kms-' + [guid]::NewGuid().ToString('n').Substring(0, 8)
        $pwsh = [Environment]::ProcessPath
        $prefix = if ([IO.Path]::GetFileNameWithoutExtension($pwsh) -eq 'dotnet') { "'$pwsh' '$(Join-Path $PSHOME 'pwsh.dll')'" } else { "'$pwsh'" }
        $file = Join-Path ([IO.Path]::GetTempPath()) "$name.ps1"
        Set-Content -Path $file -Value @"
`$env:AWS_EC2_METADATA_DISABLED = 'true'
Import-Module '$(Get-TestModulePath)'
Start-BastionSession -Target i-0a1b2c3d4e5f60001 -AccessKey '$($KmsAws.AccessKey)' -SecretKey '$($KmsAws.SecretKey)' -Region '$($KmsAws.Region)' -EndpointUrl '$($KmsAws.EndpointUrl)' -Verbose
Write-Host 'PWSH-BACK'
Start-Sleep -Seconds 30
"@
        function Screen { (& $tmux capture-pane -p -t $name -S -200) -join "`n" }
        function WaitFor([string] $Pattern, [int] $Seconds = 20) {
            $deadline = [DateTime]::UtcNow.AddSeconds($Seconds)
            while ([DateTime]::UtcNow -lt $deadline) { $s = Screen; if ($s -match $Pattern) { return $s }; Start-Sleep -Milliseconds 200 }
            throw "Timed out waiting for /$Pattern/ on the screen:`n$(Screen)"
        }
        try {
            & $tmux new-session -d -s $name -x 110 -y 35 "$prefix -NoProfile -File '$file'"
            WaitFor '(?m)[\$#]\s*$' | Out-Null
            & $tmux send-keys -t $name 'stty size; echo secret-$((7*6))' Enter
            $s = WaitFor '(?m)^secret-42\s*$'
            # The size went once the handshake completed (the agent drops what comes before it).
            $s | Should -Match '(?m)^35 110\s*$'
            & $tmux send-keys -t $name 'exit' Enter
            WaitFor 'PWSH-BACK' | Should -Match 'encrypted with AWS KMS'
            $shell = @(Get-Control 'sessions' | ForEach-Object { $_ } | Where-Object { $_.documentName -eq 'SSM-SessionManagerRunShell' })[-1]
            $shell.encrypted | Should -BeTrue
            $shell.kmsKeyId | Should -Be 'alias/bastion-session-data'
            $shell.decryptionFailures | Should -Be 0
        }
        finally {
            & $tmux kill-session -t $name 2>$null
            Remove-Item $file -ErrorAction SilentlyContinue
        }
    }
}
