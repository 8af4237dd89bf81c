<#
.SYNOPSIS
    The BastionTools demo, run by 'build.ps1 -Task Demo': the user story as a user would type it, against the
    sandbox — local doubles of SSM, EC2 and the Session Manager data channel, in front of a real PostgreSQL.
    Nothing here reaches AWS: every endpoint is on 127.0.0.1, and the credentials are the sandbox's own.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    # BastionTools.Sandbox.dll (build.ps1 builds it to out/sandbox).
    [string] $SandboxPath = $env:BASTIONTOOLS_SANDBOX
)
$ErrorActionPreference = 'Stop'
$env:AWS_EC2_METADATA_DISABLED = 'true'

function Step([string] $Text, [scriptblock] $Block) {
    Write-Host ''
    Write-Host "PS> $Text" -ForegroundColor Yellow
    & $Block
}

if (-not $SandboxPath -or -not (Test-Path $SandboxPath)) { throw "The sandbox is not built ('$SandboxPath'): run ./build.ps1 -Task Demo." }

Write-Host 'Starting the sandbox (SSM, EC2 and Session Manager doubles on 127.0.0.1, and a throwaway PostgreSQL)...' -ForegroundColor DarkGray
$psi = [System.Diagnostics.ProcessStartInfo]::new('dotnet')
foreach ($a in $SandboxPath, '--rds') { $psi.ArgumentList.Add($a) }
$psi.RedirectStandardInput = $true; $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true; $psi.UseShellExecute = $false
$sandboxProcess = [System.Diagnostics.Process]::Start($psi)
try {
    $sandbox = $sandboxProcess.StandardOutput.ReadLine() | ConvertFrom-Json
    if (-not $sandbox) { throw "The sandbox did not start: $($sandboxProcess.StandardError.ReadToEnd())" }
    $endpoint = $sandbox.rds.endpoint
    # The sandbox's database presents a certificate from its own CA; against real RDS the module's bundled RDS CA
    # bundle is the default and this is not needed.
    $PSDefaultParameterValues['*-RdsIamUser:SslRootCertificate'] = $sandbox.rds.caBundle
    $PSDefaultParameterValues['Connect-IamPostgres:SslRootCertificate'] = $sandbox.rds.caBundle
    $master = [pscredential]::new($sandbox.postgres.user, (ConvertTo-SecureString $sandbox.postgres.password -AsPlainText -Force))

    # What a real run gets from a profile, SSO or OIDC: here the sandbox's test credentials, in this process only.
    $env:AWS_ACCESS_KEY_ID = $sandbox.accessKeyId
    $env:AWS_SECRET_ACCESS_KEY = $sandbox.secretAccessKey
    $env:AWS_REGION = $sandbox.region
    $PSDefaultParameterValues['*:EndpointUrl'] = $sandbox.ssm

    Step 'Import-Module BastionTools' {
        $elapsed = Measure-Command { Import-Module $ModulePath -Force }
        Write-Host ("imported in {0:N0} ms: {1}" -f $elapsed.TotalMilliseconds, ((Get-Command -Module BastionTools).Name -join ', '))
    }

    Step 'Get-BastionInstance -All' {
        Get-BastionInstance -All | Format-Table | Out-Host
    }

    Step "New-RdsIamToken -Hostname $endpoint -UserName app_reader -Debug" {
        $script:token = New-RdsIamToken -Hostname $endpoint -UserName app_reader -Debug 5>&1 | ForEach-Object {
            if ($_ -is [System.Management.Automation.DebugRecord]) { Write-Host "DEBUG: $($_.Message)" -ForegroundColor DarkGray } else { $_ }
        }
        Write-Host ("token: {0}&X-Amz-Signature=… ({1} characters, valid 15 minutes)" -f ($script:token -split '&X-Amz-Signature=')[0], $script:token.Length)
    }

    Step "Grant-RdsIamUser -Name bastion -DbHost $endpoint -Database appdb -UserName app_reader -Access ReadOnly -Credential `$master -DbiResourceId db-ABCDEFGHIJKLMNOPQRST -AccountId 123456789012" {
        $script:grant = Grant-RdsIamUser -Name bastion -DbHost $endpoint -Database $sandbox.postgres.database -UserName app_reader -Access ReadOnly -Credential $master -DbiResourceId db-ABCDEFGHIJKLMNOPQRST -AccountId $sandbox.accountId
        $script:grant | Format-List UserName, Changed, Changes, Summary, ResourceArn | Out-Host
        Write-Host $script:grant.PolicyJson
    }

    Step "`$db = Connect-IamPostgres -Name bastion -DbHost $endpoint -Database appdb -UserName app_reader" {
        $script:db = Connect-IamPostgres -Name bastion -DbHost $endpoint -Database $sandbox.postgres.database -UserName app_reader
        $script:db | Format-Table | Out-Host
    }

    Step "Invoke-IamPostgresQuery -Connection `$db -Query 'select id, name from seed_items where id >= @min order by id' -Parameters @{ min = 2 }" {
        Invoke-IamPostgresQuery -Connection $script:db -Query 'select id, name from seed_items where id >= @min order by id' -Parameters @{ min = 2 } | Format-Table | Out-Host
    }

    Step "Invoke-IamPostgresQuery -Connection `$db -Query 'delete from seed_items'   # not granted" {
        Invoke-IamPostgresQuery -Connection $script:db -Query 'delete from seed_items' -ErrorAction SilentlyContinue -ErrorVariable denied
        Write-Host ("{0} ({1})" -f $denied[0].Exception.Message, $denied[0].CategoryInfo.Category) -ForegroundColor DarkYellow
    }

    Step 'Get-BastionSession' {
        Get-BastionSession | Format-Table | Out-Host
    }

    Step '$db | Disconnect-IamPostgres' {
        $script:db | Disconnect-IamPostgres
        Write-Host ("connection {0}; sessions left: {1}" -f $script:db.State, @(Get-BastionSession).Count)
    }

    Step "Start-BastionSession -Name bastion -Command 'uname -sr; id -un'" {
        Start-BastionSession -Name bastion -Command 'uname -sr; id -un' | Out-Host
    }

    Write-Host ''
    Write-Host 'Demo finished.' -ForegroundColor Green
}
finally {
    Get-BastionSession -ErrorAction SilentlyContinue | Stop-BastionSession -ErrorAction SilentlyContinue
    $sandboxProcess.StandardInput.Close()
    if (-not $sandboxProcess.WaitForExit(20000)) { $sandboxProcess.Kill($true) }
}
